//! A tiny freestanding test guest, built here from hand-written x86-64
//! machine code: a 64-bit ELF that Firecracker enters through its normal
//! Linux boot path (long mode, identity-mapped low memory, interrupts off)
//! and that loops forever:
//!
//! ```text
//!     counter += 1            ; a u64 in guest memory at DATA
//!     print "COUNT <counter>\n" to COM1 (port 0x3f8)
//!     spin `delay` times
//! ```
//!
//! The counter lives in guest memory, so a restored snapshot continues
//! from the value it had when it was taken.

/// Guest-physical load address (Firecracker wants kernels at >= 1 MiB).
const LOAD: u64 = 0x10_0000;
/// The counter (u64) and, 0x10..0x30 above it, the digit buffer.
const DATA: u32 = 0x10_1000;
/// Bytes the segment occupies in memory (code + data).
const MEMSZ: u64 = 0x2000;
const EHDR: usize = 64;
const PHDR: usize = 56;

/// The readiness text for `smolvm image import --ready-console`.
pub const READY_TEXT: &str = "COUNT ";

/// Machine code with backward rel8 jumps resolved by label.
struct Code {
    bytes: Vec<u8>,
}

impl Code {
    fn at(&self) -> usize {
        self.bytes.len()
    }
    fn emit(&mut self, b: &[u8]) {
        self.bytes.extend_from_slice(b);
    }
    fn emit_imm32(&mut self, opcode: &[u8], imm: u32) {
        self.emit(opcode);
        self.emit(&imm.to_le_bytes());
    }
    /// A short jump (`op` rel8) back to `target`.
    fn jump_back(&mut self, op: u8, target: usize) {
        let rel = target as isize - (self.at() as isize + 2);
        assert!((-128..0).contains(&rel), "jump out of rel8 range");
        self.emit(&[op, rel as i8 as u8]);
    }
}

/// The guest program; `msg_addr` is where "COUNT " will be.
fn program(delay: u32, msg_addr: u32) -> Vec<u8> {
    let mut c = Code { bytes: Vec::new() };
    let top = c.at();
    c.emit_imm32(&[0xBB], DATA); //            mov ebx, DATA
    c.emit(&[0x48, 0xFF, 0x03]); //            inc qword [rbx]
    c.emit_imm32(&[0xBA], 0x3f8); //           mov edx, 0x3f8
    c.emit_imm32(&[0xBE], msg_addr); //        mov esi, msg
    c.emit_imm32(&[0xB9], READY_TEXT.len() as u32); // mov ecx, 6
    let print_msg = c.at();
    c.emit(&[0xAC]); //                        lodsb
    c.emit(&[0xEE]); //                        out dx, al
    c.jump_back(0xE2, print_msg); //           loop print_msg
    c.emit(&[0x48, 0x8B, 0x03]); //            mov rax, [rbx]
    c.emit(&[0x48, 0x8D, 0x7B, 0x30]); //      lea rdi, [rbx+0x30]
    c.emit_imm32(&[0xB9], 10); //              mov ecx, 10
    let digit = c.at();
    c.emit(&[0x31, 0xD2]); //                  xor edx, edx
    c.emit(&[0x48, 0xF7, 0xF1]); //            div rcx
    c.emit(&[0x80, 0xC2, b'0']); //            add dl, '0'
    c.emit(&[0x48, 0xFF, 0xCF]); //            dec rdi
    c.emit(&[0x88, 0x17]); //                  mov [rdi], dl
    c.emit(&[0x48, 0x85, 0xC0]); //            test rax, rax
    c.jump_back(0x75, digit); //               jnz digit
    c.emit_imm32(&[0xBA], 0x3f8); //           mov edx, 0x3f8
    c.emit(&[0x48, 0x8D, 0x73, 0x30]); //      lea rsi, [rbx+0x30]
    let out = c.at();
    c.emit(&[0x8A, 0x07]); //                  mov al, [rdi]
    c.emit(&[0xEE]); //                        out dx, al
    c.emit(&[0x48, 0xFF, 0xC7]); //            inc rdi
    c.emit(&[0x48, 0x39, 0xF7]); //            cmp rdi, rsi
    c.jump_back(0x75, out); //                 jne out
    c.emit(&[0xB0, b'\n']); //                 mov al, '\n'
    c.emit(&[0xEE]); //                        out dx, al
    c.emit_imm32(&[0xB9], delay.max(1)); //    mov ecx, delay
    let spin = c.at();
    c.emit(&[0xFF, 0xC9]); //                  dec ecx
    c.jump_back(0x75, spin); //                jnz spin
    let rel = top as i64 - (c.at() as i64 + 5);
    c.emit(&[0xE9]); //                        jmp top (rel32)
    c.emit(&(rel as i32).to_le_bytes());
    c.bytes
}

/// The complete ELF file.
pub fn elf(delay: u32) -> Vec<u8> {
    let code_off = EHDR + PHDR;
    // Two passes: the code's length fixes where the message lands.
    let len = program(delay, 0).len();
    let msg_addr = LOAD as u32 + (code_off + len) as u32;
    let mut code = program(delay, msg_addr);
    assert_eq!(code.len(), len);
    code.extend_from_slice(READY_TEXT.as_bytes());
    let file_len = (code_off + code.len()) as u64;
    assert!(
        file_len < u64::from(DATA) - LOAD,
        "code overlaps the data page"
    );
    let entry = LOAD + code_off as u64;

    let mut f = Vec::with_capacity(file_len as usize);
    // ELF header.
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(f.len(), EHDR);
    // One loadable segment: headers, code and message, plus the data page.
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // read, write, execute
    f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD.to_le_bytes()); // p_paddr
    f.extend_from_slice(&file_len.to_le_bytes()); // p_filesz
    f.extend_from_slice(&MEMSZ.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(f.len(), code_off);
    f.extend_from_slice(&code);
    f
}

/// The counts printed in `console` text, in order (complete lines only:
/// the text after the last newline may still be being written).
pub fn counts(console: &str) -> Vec<u64> {
    let complete = console.rfind('\n').map_or("", |end| &console[..end]);
    complete
        .split('\n')
        .filter_map(|line| {
            line.rsplit(READY_TEXT)
                .next()
                .filter(|_| line.contains(READY_TEXT))
        })
        .filter_map(|n| n.trim_end_matches('\r').parse().ok())
        .collect()
}

#[test]
fn the_guest_is_a_small_valid_elf() {
    let e = elf(1000);
    assert!(e.len() < 400, "{} bytes", e.len());
    assert_eq!(&e[..4], b"\x7fELF");
    assert!(e.ends_with(READY_TEXT.as_bytes()));
    assert_eq!(
        counts("COUNT 1\nCOUNT 2\nCOU\nxCOUNT 7\nCOUNT 1"),
        vec![1, 2, 7]
    );
}
