//! Internet checksums (RFC 1071) and their incremental update (RFC 1624), so that a NAT rewrite
//! touches only the words it changes.

/// One's-complement sum of `data` (a trailing odd byte is padded with zero), not yet folded.
pub fn sum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut acc: u32 = 0;
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

/// Folds a sum to 16 bits and complements it: the value that goes into a header.
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The sum of the IPv4 pseudo-header that TCP and UDP checksums cover.
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    sum(&src) + sum(&dst) + proto as u32 + len as u32
}

/// RFC 1624 eqn. 3: the checksum after the 16-bit word `old` became `new`.
pub fn update(check: u16, old: u16, new: u16) -> u16 {
    finish((!check) as u32 + (!old) as u32 + new as u32)
}

/// [`update`] for a 32-bit field (an address).
pub fn update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let w = |b: [u8; 4], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    update(update(check, w(old, 0), w(new, 0)), w(old, 2), w(new, 2))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn incremental_equals_recomputed() {
        let mut data = [0u8; 20];
        let mut seed = 0x1234_5678u32;
        for round in 0..2000 {
            for b in data.iter_mut() {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            data[10] = 0;
            data[11] = 0;
            let check = finish(sum(&data));
            let old = [data[12], data[13], data[14], data[15]];
            let new = [(seed >> 3) as u8, round as u8, 7, (seed >> 11) as u8];
            data[12..16].copy_from_slice(&new);
            let incremental = update32(check, old, new);
            let full = finish(sum(&data));
            // One's complement has two zeros; a verifier accepts either.
            assert!(
                incremental == full || (incremental ^ full == 0xffff && full.is_multiple_of(0xffff)),
                "round {round}"
            );
            data[10..12].copy_from_slice(&incremental.to_be_bytes());
            assert_eq!(finish(sum(&data)) % 0xffff, 0, "round {round}: the sum over a correct header is zero");
        }
    }

    #[test]
    fn odd_length_is_padded() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
