"""Boot a board image (scripts/image) in qemu-system-aarch64's virt machine, with a GPS on its UART.

The guest runs the image's own kernel and initrd (copied off its FAT partition) and its own
kernel command line with the console moved to a virtio console (hvc0), so the PL011 UART
(ttyAMA0) is free for the GPS: a TCP socket this process serves, fed with an NMEA recording at
recorded speed. QEMU's user networking shows this machine as 10.0.2.2 to the guest.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from hw.protocol_replay import line_time, pacing, split_recording

MIB = 1 << 20


def partitions(image: Path) -> list[dict[str, int]]:
    out = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    ).stdout
    parts: list[dict[str, int]] = json.loads(out)["partitiontable"]["partitions"]
    return parts


def fat_spec(image: Path) -> str:
    """mtools' name for the image's first (FAT) partition."""
    return f"{image}@@{partitions(image)[0]['start'] * 512}"


def fat_list(image: Path) -> list[str]:
    out = subprocess.run(
        ["mdir", "-b", "-i", fat_spec(image), "::"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(line.strip().removeprefix("::/") for line in out.splitlines() if line.strip())


def fat_put(image: Path, files: dict[str, Path]) -> None:
    spec = fat_spec(image)
    for name, src in files.items():
        subprocess.run(["mcopy", "-o", "-i", spec, str(src), f"::{name}"], check=True)


def fat_get(image: Path, name: str, dest: Path) -> Path:
    subprocess.run(["mcopy", "-o", "-i", fat_spec(image), f"::{name}", str(dest)], check=True)
    return dest


def kernel_files(image: Path, dest: Path) -> tuple[Path, Path, str]:
    """The image's vmlinuz, initrd and kernel command line (console moved to hvc0)."""
    names = fat_list(image)
    kernel = next(n for n in names if n.startswith("vmlinuz-"))
    initrd = next(n for n in names if n.startswith("initrd.img-"))
    cmdline = fat_get(image, "cmdline.txt", dest / "cmdline.txt").read_text().split()
    cmdline = [arg for arg in cmdline if not arg.startswith("console=")] + ["console=hvc0"]
    return (
        fat_get(image, kernel, dest / kernel),
        fat_get(image, initrd, dest / initrd),
        " ".join(cmdline),
    )


class NmeaFeed:
    """A TCP server QEMU's UART connects to; sends the recording at `speed`, over and over."""

    def __init__(self, recording: Path, speed: float = 1.0) -> None:
        self.lines = split_recording(recording.read_bytes())
        self.offsets = pacing([line_time(line) for line in self.lines], speed=speed)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.server.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                self._play(conn)

    def _play(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            for line, offset in zip(self.lines, self.offsets, strict=True):
                delay = start + offset - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                conn.sendall(line)
                self.sent += 1
            self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._thread.join(timeout=5)


class Guest:
    """qemu-system-aarch64 -M virt -cpu cortex-a53 -m 512 running a copy of the image.

    `power_cut()` is the real thing: QEMU killed with SIGKILL and started again on the same
    disk file, so the guest's page cache, the disk requests QEMU had not carried out and the
    devices' state are lost, as when a vehicle's supply drops.
    """

    def __init__(
        self, image: Path, work: Path, gps_port: int, *, smp: int = 2, ssh_port: int = 0
    ) -> None:
        self.image, self.work, self.ssh_port = image, work, ssh_port
        self.console = work / "console.log"
        self.monitor = work / "monitor.sock"
        kernel, initrd, cmdline = kernel_files(image, work)
        # the guest's SSH port on this machine's loopback (0: none)
        net = "user,id=net" + (f",hostfwd=tcp:127.0.0.1:{ssh_port}-:22" if ssh_port else "")
        self.cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "512",
            "-smp", str(smp), "-nodefaults", "-display", "none",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-drive", f"file={image},format=raw,if=none,id=disk,cache=writeback",
            "-device", "virtio-blk-pci,drive=disk",
            "-netdev", net, "-device", "virtio-net-pci,netdev=net,romfile=",
            "-device", "virtio-rng-pci",
            # the GPS: the first (only) PL011 UART, ttyAMA0 in the guest
            "-chardev", f"socket,id=gps,host=127.0.0.1,port={gps_port}",
            "-serial", "chardev:gps",
            # one console log across power cuts
            "-chardev", f"file,id=con,path={self.console},append=on",
            "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=con",
            "-monitor", f"unix:{self.monitor},server=on,wait=off",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        if shutil.which(self.cmd[0]) is None:
            raise RuntimeError("qemu-system-aarch64 not found: apt-get install qemu-system-arm")
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.started = time.monotonic()

    def power_cut(self) -> None:
        """SIGKILL QEMU, then power the board on again from the same disk."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def failure(self) -> str:
        """Why QEMU is not running (its own output), or the end of the guest's console."""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout:
            return f"QEMU exited ({self.proc.returncode}): " + self.proc.stdout.read().decode()
        return self.console_text()[-3000:]

    def command(self, text: str) -> str:
        """One QEMU monitor command (e.g. system_reset: the power cut)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.monitor))
            s.settimeout(5)
            s.sendall(text.encode() + b"\n")
            time.sleep(0.5)
            try:
                return s.recv(65536).decode(errors="replace")
            except TimeoutError:
                return ""

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, pattern: str, timeout: float, after: int = 0) -> float | None:
        """Seconds since start when `pattern` (regex) appears in the console past `after`."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline and self.running():
            if rx.search(self.console_text()[after:]):
                return time.monotonic() - self.started
            time.sleep(1)
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
