//! Where a hung guest's CPUs are, read through QEMU's monitor: a guest stuck with
//! interrupts off prints nothing on its console, not even a soft lockup.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

/// How often each CPU's instruction pointer is read, and how many stack words are scanned.
const SAMPLES: usize = 20;
const STACK_WORDS: usize = 256;

/// Each CPU's instruction pointers over a few seconds, and the kernel text addresses on its
/// stack (as the kernel's own "?" lines: candidates, not a verified call chain).
pub fn where_cpus_are(monitor: &Path, kallsyms: &Path) -> anyhow::Result<String> {
    let symbols = Symbols::read(kallsyms);
    let mut hmp = Monitor::connect(monitor)?;
    let mut samples: BTreeMap<usize, BTreeMap<String, usize>> = BTreeMap::new();
    for _ in 0..SAMPLES {
        let registers = hmp.command("info registers -a")?;
        for (cpu, rip, _) in registers_of(&registers) {
            *samples
                .entry(cpu)
                .or_default()
                .entry(symbols.name(rip))
                .or_default() += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stacks = registers_of(&hmp.command("info registers -a")?);
    let mut out = String::new();
    for (cpu, places) in &samples {
        let mut places: Vec<_> = places.iter().collect();
        places.sort_by(|a, b| b.1.cmp(a.1));
        writeln!(out, "CPU {cpu}, {SAMPLES} samples:")?;
        for (place, count) in places {
            writeln!(out, "  {count:>3} x {place}")?;
        }
        let Some(&(_, _, rsp)) = stacks.iter().find(|(c, ..)| c == cpu) else {
            continue;
        };
        hmp.command(&format!("cpu {cpu}"))?;
        let stack = hmp.command(&format!("x/{STACK_WORDS}gx {rsp:#x}"))?;
        writeln!(out, "  text addresses on its stack:")?;
        for word in stack_words(&stack).filter(|&w| symbols.is_text(w)) {
            writeln!(out, "    ? {}", symbols.name(word))?;
        }
    }
    Ok(out)
}

/// A human monitor session on QEMU's socket.
struct Monitor {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

const PROMPT: &[u8] = b"(qemu) ";

impl Monitor {
    fn connect(path: &Path) -> anyhow::Result<Self> {
        let writer =
            UnixStream::connect(path).with_context(|| format!("connecting {}", path.display()))?;
        writer.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut monitor = Self {
            reader: BufReader::new(writer.try_clone()?),
            writer,
        };
        monitor.until_prompt()?;
        Ok(monitor)
    }

    fn command(&mut self, line: &str) -> anyhow::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        self.until_prompt()
    }

    /// What the monitor printed up to its next prompt.
    fn until_prompt(&mut self) -> anyhow::Result<String> {
        let mut out = Vec::new();
        while !out.ends_with(PROMPT) {
            let mut byte = [0_u8];
            self.reader
                .read_exact(&mut byte)
                .context("reading QEMU's monitor")?;
            out.push(byte[0]);
            if out.len() > 4 << 20 {
                anyhow::bail!("QEMU's monitor printed more than 4 MiB without a prompt");
            }
        }
        // Lines end with \r\n; the echoed command carries terminal escapes: both ignored
        // by the parsers below.
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// (CPU, RIP, RSP) from `info registers -a`: each CPU's block starts with "CPU#N".
fn registers_of(registers: &str) -> Vec<(usize, u64, u64)> {
    let mut out = Vec::new();
    for block in registers.split("CPU#").skip(1) {
        let Some(cpu) = block.split_whitespace().next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let register = |name: &str| {
            block
                .split_whitespace()
                .find_map(|t| t.strip_prefix(name))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        };
        if let (Some(rip), Some(rsp)) = (register("RIP="), register("RSP=")) {
            out.push((cpu, rip, rsp));
        }
    }
    out
}

/// The words of `x/Ngx`: lines of "address: 0x... 0x...".
fn stack_words(dump: &str) -> impl Iterator<Item = u64> + '_ {
    dump.lines()
        .filter_map(|l| l.split_once(": "))
        .flat_map(|(_, words)| words.split_whitespace())
        .filter_map(|w| u64::from_str_radix(w.strip_prefix("0x")?, 16).ok())
}

/// Kernel text symbols (the guest's /proc/kallsyms, modules' included), sorted by address.
struct Symbols(Vec<(u64, String)>);

impl Symbols {
    /// Empty when the list is missing: addresses are then printed raw.
    fn read(path: &Path) -> Self {
        let mut symbols: Vec<(u64, String)> = fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let address = u64::from_str_radix(fields.next()?, 16).ok()?;
                let kind = fields.next()?;
                let name = fields.next()?;
                matches!(kind, "t" | "T").then(|| (address, name.to_owned()))
            })
            .collect();
        symbols.sort_unstable();
        Self(symbols)
    }

    fn is_text(&self, address: u64) -> bool {
        match (self.0.first(), self.0.last()) {
            (Some(first), Some(last)) => (first.0..=last.0 + (1 << 16)).contains(&address),
            _ => false,
        }
    }

    fn name(&self, address: u64) -> String {
        match self
            .0
            .partition_point(|(a, _)| *a <= address)
            .checked_sub(1)
        {
            // Farther from a symbol: a module or BPF program loaded after the list was taken.
            Some(i) if self.is_text(address) && address - self.0[i].0 < 1 << 16 => {
                let (start, name) = &self.0[i];
                format!("{name}+{:#x}", address - start)
            }
            _ => format!("{address:#x}"),
        }
    }
}
