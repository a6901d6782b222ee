//! Guest images (kernel + initramfs + root filesystem).
