//! The QEMU command line, built as an argv (never a shell string).

use super::{CONSOLE_LOG, QMP_SOCKET};
use crate::backend::accel::{host_tsc_khz, Accel};
use crate::backend::LaunchSpec;
use crate::sandbox::{Machine, NetworkMode};

/// Where distributions install QEMU's minimal qboot firmware.
const QBOOT_PATHS: &[&str] = &["/usr/share/qemu/qboot.rom", "/usr/share/seabios/qboot.rom"];

/// Guest address on QEMU's user-mode network.
pub const GUEST_IP: &str = "10.0.2.15";

/// Builds QEMU's argv for `spec` (without the program name).
pub fn build(spec: &LaunchSpec<'_>) -> Vec<String> {
    let c = spec.config;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let (machine, dev) = match c.machine {
        Machine::Microvm => ("microvm,pit=on,pic=on,rtc=on,acpi=on", "device"),
        Machine::Q35 => ("q35", "pci"),
    };
    push(&["-name", &format!("smolvm-{},debug-threads=on", spec.name)]);
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    push(&["-machine", machine]);
    if c.machine == Machine::Microvm {
        // qboot jumps straight to the kernel; SeaBIOS spends ~1.5 s first.
        if let Some(qboot) = QBOOT_PATHS.iter().find(|p| std::path::Path::new(p).is_file()) {
            push(&["-bios", qboot]);
        }
    }
    match c.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    push(&["-m", &c.memory_mib.to_string(), "-smp", &c.vcpus.to_string()]);
    let image = spec.image;
    push(&["-kernel", &image.vmlinuz().display().to_string()]);
    push(&["-initrd", &image.initramfs().display().to_string()]);
    push(&["-append", &kernel_cmdline(spec)]);
    // format=qcow2 is always explicit: a guessed format breaks snapshots.
    // Absolute: overlays created on top record their backing file by it.
    // Nodes are named after the layer, so a later snapshot knows which
    // node is the top without asking.
    let id = spec.disk_id;
    push(&["-blockdev", &format!("driver=file,filename={},node-name=f{id}", escape(&spec.disk.display().to_string()))]);
    push(&["-blockdev", &format!("driver=qcow2,file=f{id},node-name={id}")]);
    push(&["-device", &format!("virtio-blk-{dev},drive={id},id=vda")]);
    match c.network {
        NetworkMode::User => {
            let mut netdev = "user,id=net0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3".to_string();
            for p in &c.ports {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", p.host, p.guest));
            }
            push(&["-netdev", &netdev]);
            push(&["-device", &format!("virtio-net-{dev},netdev=net0,mac={}", c.mac)]);
        }
        NetworkMode::None => {}
    }
    push(&["-device", &format!("virtio-serial-{dev},id=vser0,max_ports={}", smolvm_proto::AGENT_PORTS + 1)]);
    for n in 0..smolvm_proto::AGENT_PORTS {
        push(&["-chardev", &format!("socket,id=agent{n},path=agent-{n}.sock,server=on,wait=off")]);
        push(&[
            "-device",
            &format!("virtserialport,bus=vser0.0,nr={},chardev=agent{n},name={}{n}", n + 1, smolvm_proto::AGENT_PORT_PREFIX),
        ]);
    }
    push(&["-device", &format!("virtio-rng-{dev}")]);
    push(&["-chardev", &format!("file,id=console,path={CONSOLE_LOG},append=on")]);
    push(&["-serial", "chardev:console"]);
    push(&["-qmp", &format!("unix:{QMP_SOCKET},server=on,wait=off")]);
    // Lets a later command find (and kill) a QEMU whose launcher crashed.
    push(&["-pidfile", crate::sandbox::PIDFILE]);
    if spec.paused {
        push(&["-S"]);
    }
    if spec.incoming.is_some() {
        push(&["-incoming", "defer"]);
    }
    a
}

/// The guest kernel command line: the image's needs plus our identity and
/// network parameters, read by the guest init.
pub fn kernel_cmdline(spec: &LaunchSpec<'_>) -> String {
    let c = spec.config;
    let mut base = crate::image::KERNEL_CMDLINE_BASE.to_string();
    if std::env::var_os("SMOLVM_VERBOSE_BOOT").is_some_and(|v| !v.is_empty() && v != "0") {
        base = base.replace(" quiet", "");
    }
    let mut parts = vec![base];
    if c.accel == Accel::Tcg {
        if let Some(khz) = host_tsc_khz() {
            parts.push(format!("tsc_early_khz={khz}"));
        }
    }
    parts.push(format!("smolvm.hostname={}", crate::sandbox::hostname_for(spec.name)));
    if c.network == NetworkMode::User {
        parts.push(format!("smolvm.ip={GUEST_IP}/24 smolvm.gw=10.0.2.2 smolvm.dns=10.0.2.3"));
    }
    parts.join(" ")
}

/// Escapes a value for QEMU's `key=value,...` option syntax (commas double).
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}
