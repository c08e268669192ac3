//! The DATA reader's and the dot-stuffer's tests: tables of wire input, and properties.

use super::*;
use proptest::prelude::*;

/// Reads `input` (split into `chunk`-sized pieces) and returns content, consumed
/// count, whether the end was seen, and the violation.
fn read(
    input: &[u8],
    policy: BareLineEndings,
    chunk: usize,
) -> (Vec<u8>, usize, bool, Option<DataViolation>) {
    let mut reader = DataReader::new(policy, 1000, 1 << 30);
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in input.chunks(chunk.max(1)) {
        let feed = reader.feed(piece, &mut out);
        consumed += feed.consumed;
        if feed.finished {
            return (out, consumed, true, reader.violation());
        }
    }
    (out, consumed, false, reader.violation())
}

fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stuffer = DotStuffer::default();
    stuffer.stuff(content, &mut out);
    stuffer.finish(&mut out);
    out
}

#[test]
fn the_limit_met_first_decides_however_the_input_is_split() {
    // Line limit 10, size limit 15. The second line is one run of text that
    // crosses the size limit at its 6th octet and the line limit at its 11th.
    let cases: &[(&[u8], DataViolation)] = &[
        (
            b"abcdefgh\r\nijklmnopqrstuvwxyz\r\n.\r\n",
            DataViolation::TooBig,
        ),
        (
            b"abc\r\nabcdefghijklmnop\r\n.\r\n",
            DataViolation::LineTooLong,
        ),
        (
            b"abcdefghijklmnopqrstuvwxyz\r\n.\r\n",
            DataViolation::LineTooLong,
        ),
    ];
    for (input, expected) in cases {
        for chunk in [1, 2, 3, 7, input.len()] {
            let mut reader = DataReader::new(BareLineEndings::Reject, 10, 15);
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                reader.feed(piece, &mut out);
            }
            assert_eq!(
                reader.violation(),
                Some(*expected),
                "{} in pieces of {chunk}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

#[test]
fn finds_the_end_and_unstuffs() {
    use BareLineEndings::Reject;
    let cases: &[(&[u8], &[u8], usize, bool)] = &[
        (b".\r\n", b"", 3, true),
        (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", 6, true),
        (b"..x\r\n.\r\n", b".x\r\n", 8, true),
        (b"...\r\n.\r\n", b"..\r\n", 8, true),
        (b"..\r\n.\r\n", b".\r\n", 7, true),
        (b"a\r\n.", b"a\r\n", 4, false),
        (b"a\r\n.\r", b"a\r\n", 5, false),
        (b"a.\r\n.\r\n", b"a.\r\n", 7, true),
    ];
    for (input, content, consumed, finished) in cases {
        for chunk in [1, 2, 3, 1000] {
            let (out, used, done, violation) = read(input, Reject, chunk);
            assert_eq!(
                (out.as_slice(), used, done, violation),
                (*content, *consumed, *finished, None),
                "{input:?} chunk {chunk}"
            );
        }
    }
}

#[test]
fn smuggling_terminators_are_not_the_end() {
    // Each of these would end the message for a lax receiver.
    let attempts: &[&[u8]] = &[
        b"a\n.\nMAIL FROM:<x@y.z>\r\n",
        b"a\r.\rMAIL FROM:<x@y.z>\r\n",
        b"a\n.\r\nMAIL FROM:<x@y.z>\r\n",
        b"a\r\n.\nMAIL FROM:<x@y.z>\r\n",
        b"a\r\n.\rMAIL FROM:<x@y.z>\r\n",
        b"a\r.\r\nMAIL FROM:<x@y.z>\r\n",
    ];
    for attempt in attempts {
        for policy in [BareLineEndings::Reject, BareLineEndings::Normalize] {
            let (out, used, done, violation) = read(attempt, policy, 1000);
            assert!(!done, "{attempt:?} ended the message under {policy:?}");
            assert_eq!(used, attempt.len());
            match policy {
                BareLineEndings::Reject => {
                    assert_eq!(violation, Some(DataViolation::BareLineEnding))
                }
                BareLineEndings::Normalize => {
                    assert_eq!(violation, None);
                    let upstream = stuff(&out);
                    let body = &upstream[..upstream.len() - 3];
                    assert!(
                        !contains(body, b"\r\n.\r\n"),
                        "{attempt:?} smuggles a terminator upstream: {upstream:?}"
                    );
                    assert!(!has_bare_line_ending(&upstream), "{upstream:?}");
                }
            }
        }
    }
}

#[test]
fn bare_line_endings_in_every_position() {
    let cases: &[&[u8]] = &[
        b"\nabc\r\n.\r\n",
        b"\rabc\r\n.\r\n",
        b"ab\ncd\r\n.\r\n",
        b"ab\rcd\r\n.\r\n",
        b"abc\n\r\n.\r\n",
        b"abc\r\r\n.\r\n",
        b"abc\r\n\nx\r\n.\r\n",
        b".\nabc\r\n.\r\n",
        b"x\r\n.\rabc\r\n.\r\n",
    ];
    for input in cases {
        let (_, used, done, violation) = read(input, BareLineEndings::Reject, 1);
        assert_eq!(
            (used, done, violation),
            (input.len(), true, Some(DataViolation::BareLineEnding)),
            "{input:?}"
        );
        let (out, _, done, violation) = read(input, BareLineEndings::Normalize, 1);
        assert!(done && violation.is_none(), "{input:?}");
        assert!(!has_bare_line_ending(&out), "{input:?} -> {out:?}");
    }
}

#[test]
fn enforces_line_and_size_limits() {
    let long_line = [vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
    let mut reader = DataReader::new(BareLineEndings::Reject, 1000, 1 << 20);
    assert!(reader.feed(&long_line, &mut Vec::new()).finished);
    assert_eq!(reader.violation(), None);

    let too_long = [vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
    let mut reader = DataReader::new(BareLineEndings::Reject, 1000, 1 << 20);
    assert!(reader.feed(&too_long, &mut Vec::new()).finished);
    assert_eq!(reader.violation(), Some(DataViolation::LineTooLong));

    let mut reader = DataReader::new(BareLineEndings::Reject, 1000, 10);
    let mut out = Vec::new();
    assert!(reader.feed(b"0123456789\r\n.\r\n", &mut out).finished);
    assert_eq!(reader.violation(), Some(DataViolation::TooBig));
}

#[test]
fn stuffs_leading_dots() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
        (b"no newline", b"no newline\r\n.\r\n"),
    ];
    for (content, wire) in cases {
        assert_eq!(stuff(content), *wire, "{content:?}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn has_bare_line_ending(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        (b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
            || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
    })
}

/// Message content as the reader produces it: lines of any bytes but CR and LF,
/// each ended by CRLF.
fn content_strategy() -> impl Strategy<Value = Vec<u8>> {
    let line = prop::collection::vec(
        prop::num::u8::ANY.prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..40,
    )
    .prop_map(|mut line| {
        // Lines that start with dots are the interesting ones.
        if line.first().is_some_and(|b| *b % 3 == 0) {
            line.insert(0, b'.');
        }
        line
    });
    prop::collection::vec(line, 0..20).prop_map(|lines| {
        lines
            .into_iter()
            .flat_map(|l| [l, b"\r\n".to_vec()].concat())
            .collect()
    })
}

proptest! {
    #[test]
    fn stuffing_then_unstuffing_is_identity(content in content_strategy(), chunk in 1usize..64) {
        let wire = stuff(&content);
        let (out, used, done, violation) = read(&wire, BareLineEndings::Reject, chunk);
        prop_assert!(done);
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(violation, None);
        prop_assert_eq!(out, content);
    }

    #[test]
    fn stuffing_in_pieces_doubles_exactly_the_dots_that_start_lines(content in prop::collection::vec(prop::sample::select(b"a.\r\n".to_vec()), 0..200), chunk in 1usize..16) {
        let mut stuffer = DotStuffer::default();
        let mut wire = Vec::new();
        for piece in content.chunks(chunk) {
            stuffer.stuff(piece, &mut wire);
        }
        stuffer.finish(&mut wire);
        // The same, the slow way: line by line.
        let mut expected = Vec::new();
        for line in content.split_inclusive(|&b| b == b'\n') {
            if line[0] == b'.' {
                expected.push(b'.');
            }
            expected.extend_from_slice(line);
        }
        if !content.is_empty() && !content.ends_with(b"\n") {
            expected.extend_from_slice(b"\r\n");
        }
        expected.extend_from_slice(b".\r\n");
        prop_assert_eq!(wire, expected);
    }

    #[test]
    fn any_input_never_sends_bare_endings_or_early_terminators(input in prop::collection::vec(prop::sample::select(b"ab.\r\n".to_vec()), 0..200)) {
        let (out, _, done, violation) = read(&input, BareLineEndings::Normalize, 7);
        prop_assert_eq!(violation, None);
        let upstream = stuff(&out);
        prop_assert!(!has_bare_line_ending(&upstream));
        let body = &upstream[..upstream.len() - 3];
        prop_assert!(!body.starts_with(b".\r\n") && !contains(body, b"\r\n.\r\n"));
        if done {
            prop_assert!(contains(&[b"\r\n".as_slice(), &input].concat(), b"\r\n.\r\n"));
        }
    }
}
