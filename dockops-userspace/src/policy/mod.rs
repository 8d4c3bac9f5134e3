//! Pure: what the user asked for, checked and converted to the datapath's and the kernel's
//! units. No I/O: host facts come in as plain values.

pub mod desired;
pub mod file;
pub mod labels;
pub mod resources;
pub mod update;

/// The most a socket can be paced to: `SO_MAX_PACING_RATE` takes a 32-bit count of bytes per
/// second.
pub const MAX_RATE_BITS: u64 = u32::MAX as u64 * 8;

/// The smallest hard-cap bucket: one full-size Ethernet frame.
pub const MIN_BURST: u64 = 1514;

/// The largest: about a second at the highest rate (the datapath keeps tokens in an `i64`).
pub const MAX_BURST: u64 = 4 << 30;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "invalid size {0:?}: give a number and a unit, e.g. 64kb, 1mb, 1500b (k, m, g are powers of 1024)"
    )]
    Size(String),
    #[error("burst {0:?} is smaller than one full-size packet ({MIN_BURST} bytes)")]
    BurstTooSmall(String),
    #[error("burst {0:?} is larger than {MAX_BURST} bytes (4gb), more than any cap can use")]
    BurstTooLarge(String),
    #[error(
        "burst {burst} B is less than the largest packet the container's veths pass \
         ({largest} B, their gso_max_size): such a packet could never pass the bucket; give \
         --burst {largest} or more, or leave it out"
    )]
    BurstBelowPacket { burst: u64, largest: u64 },
    #[error(
        "burst {burst} B is less than what {rate_bits} bit/s refills in one {tick_us} µs clock \
         tick: give --burst {min} or more, or leave it out"
    )]
    BurstBelowTick {
        burst: u64,
        rate_bits: u64,
        tick_us: u64,
        min: u64,
    },
    #[error(
        "invalid rate {0:?}: give a number and a unit, e.g. 10mbit, 1.5gbit, 500kbps \
         (bit, kbit, mbit, gbit, tbit; bps, kbps, mbps, gbps, tbps are bytes per second)"
    )]
    Rate(String),
    #[error("rate {0:?} is zero: use `unlimit` to remove a cap")]
    ZeroRate(String),
    #[error("rate {0:?} is above the {MAX_RATE_BITS} bit/s (about 34 Gbit/s) dockops can enforce")]
    RateTooHigh(String),
}

/// A rate in tc's units → bits per second. Decimal prefixes (1kbit = 1000 bit/s); `bps`
/// units are bytes per second; a bare number is bits per second, as in tc.
pub fn parse_rate(text: &str) -> Result<u64, PolicyError> {
    let s = text.trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bits_per_unit: f64 = match unit {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        "tbps" => 8e12,
        _ => return Err(PolicyError::Rate(text.to_owned())),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| PolicyError::Rate(text.to_owned()))?;
    let bits = value * bits_per_unit;
    if !bits.is_finite() {
        return Err(PolicyError::Rate(text.to_owned()));
    }
    #[expect(clippy::cast_precision_loss, reason = "a bound, not a value")]
    if bits > MAX_RATE_BITS as f64 {
        return Err(PolicyError::RateTooHigh(text.to_owned()));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked above"
    )]
    let bits = bits.round() as u64;
    if bits == 0 {
        return Err(PolicyError::ZeroRate(text.to_owned()));
    }
    Ok(bits)
}

/// A size in tc's units → bytes: b (or none), k/kb, m/mb, g/gb (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, PolicyError> {
    let s = text.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(PolicyError::Size(text.to_owned())),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| PolicyError::Size(text.to_owned()))
}

/// A `--burst` value: a size of at least one full-size packet, at most [`MAX_BURST`].
pub fn parse_burst(text: &str) -> Result<u64, PolicyError> {
    let bytes = parse_size(text)?;
    if bytes < MIN_BURST {
        return Err(PolicyError::BurstTooSmall(text.to_owned()));
    }
    if bytes > MAX_BURST {
        return Err(PolicyError::BurstTooLarge(text.to_owned()));
    }
    Ok(bytes)
}

/// The hard cap's bucket refills once per tick of the coarse kernel clock, so it must hold a
/// tick's worth of tokens at the bucket's rate (`rate_bits`, headroom included), or the cap
/// would fall below the rate.
pub fn check_burst(burst: u64, rate_bits: u64, tick_ns: u64) -> Result<(), PolicyError> {
    let per_tick = u128::from(rate_bits) * u128::from(tick_ns) / 8 / 1_000_000_000;
    let min = u64::try_from(per_tick).unwrap_or(u64::MAX).max(MIN_BURST);
    if burst < min {
        return Err(PolicyError::BurstBelowTick {
            burst,
            rate_bits,
            tick_us: tick_ns / 1000,
            min,
        });
    }
    Ok(())
}

/// The bucket must hold the largest aggregate (GSO/GRO) packet the veth passes, which the
/// tc program sees whole: a smaller bucket would drop every such packet.
pub fn check_burst_packet(burst: u64, largest: u64) -> Result<(), PolicyError> {
    if burst < largest {
        return Err(PolicyError::BurstBelowPacket { burst, largest });
    }
    Ok(())
}

/// The hard cap's bucket when the user gives none: 200 ms at the cap (a drop on a same-host
/// path costs a ~200 ms retransmission timeout, so a smaller bucket starves TCP), and at
/// least two 64 KiB GSO aggregates.
pub const fn default_burst(rate_bits: u64) -> u64 {
    let bytes = rate_bits / 8 / 5;
    if bytes > 128 << 10 { bytes } else { 128 << 10 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_bursts() {
        assert_eq!(parse_size("64kb"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        for bad in ["", "k", "1.5kb", "10kbit", "-1kb", "99999999999999999999g"] {
            assert_eq!(
                parse_size(bad),
                Err(PolicyError::Size(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_burst("1000b"),
            Err(PolicyError::BurstTooSmall("1000b".into()))
        );
        assert_eq!(parse_burst("1514"), Ok(1514));
        assert_eq!(parse_burst("4gb"), Ok(MAX_BURST));
        assert_eq!(
            parse_burst("5gb"),
            Err(PolicyError::BurstTooLarge("5gb".into()))
        );
        assert_eq!(
            default_burst(1_000_000),
            128 << 10,
            "floor at two aggregates"
        );
        assert_eq!(
            default_burst(1_000_000_000),
            25_000_000,
            "200 ms at 1 Gbit/s"
        );
    }

    #[test]
    fn a_burst_holds_one_clock_tick() {
        const TICK: u64 = 4_000_000;
        // 100 Mbit/s for 4 ms is 50 000 bytes.
        assert_eq!(check_burst(50_000, 100_000_000, TICK), Ok(()));
        assert_eq!(
            check_burst(49_999, 100_000_000, TICK),
            Err(PolicyError::BurstBelowTick {
                burst: 49_999,
                rate_bits: 100_000_000,
                tick_us: 4000,
                min: 50_000
            })
        );
        // Slow rates need one full-size packet, whatever the tick.
        assert_eq!(check_burst(MIN_BURST, 1_000, TICK), Ok(()));
        assert!(check_burst(MIN_BURST, MAX_RATE_BITS, u64::MAX).is_err());
    }

    #[test]
    fn burst_holds_the_largest_packet() {
        assert_eq!(check_burst_packet(65_536, 65_536), Ok(()));
        assert_eq!(
            check_burst_packet(32_768, 65_536),
            Err(PolicyError::BurstBelowPacket {
                burst: 32_768,
                largest: 65_536
            })
        );
    }

    #[test]
    fn tc_units() {
        assert_eq!(parse_rate("50mbit"), Ok(50_000_000));
        assert_eq!(parse_rate("1.5gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("100kbit"), Ok(100_000));
        assert_eq!(parse_rate("800"), Ok(800));
        assert_eq!(parse_rate("800bit"), Ok(800));
        assert_eq!(
            parse_rate("10MBit"),
            Ok(10_000_000),
            "units are case-insensitive"
        );
        assert_eq!(parse_rate("1mbps"), Ok(8_000_000), "bps units are bytes");
        assert_eq!(parse_rate("125kbps"), Ok(1_000_000));
        assert_eq!(parse_rate("34gbit"), Ok(34_000_000_000));
    }

    #[test]
    fn bad_rates_name_the_value() {
        for bad in [
            "",
            "fast",
            "10 mbit",
            "10mbits",
            "10xbit",
            "-5mbit",
            "1.2.3mbit",
            "mbit",
            "1e9bit",
        ] {
            let err = parse_rate(bad).unwrap_err();
            assert_eq!(err, PolicyError::Rate(bad.to_owned()), "{bad}");
            assert!(err.to_string().contains(&format!("{bad:?}")));
        }
        assert_eq!(
            parse_rate("0mbit"),
            Err(PolicyError::ZeroRate("0mbit".into()))
        );
        assert_eq!(
            parse_rate("0.0001bit"),
            Err(PolicyError::ZeroRate("0.0001bit".into()))
        );
        assert_eq!(
            parse_rate("35gbit"),
            Err(PolicyError::RateTooHigh("35gbit".into()))
        );
        assert_eq!(
            parse_rate("99999999999999999999999tbit"),
            Err(PolicyError::RateTooHigh(
                "99999999999999999999999tbit".into()
            ))
        );
    }
}
