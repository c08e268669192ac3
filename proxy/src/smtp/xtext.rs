//! xtext (RFC 3461 §4): the encoding XCLIENT attribute values and DSN parameters use.
//! Octets outside `!`..`~`, and `+` and `=`, are written as `+HH`.

/// Encodes `value` as xtext.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_special_octets() {
        let cases = [
            ("client.example", "client.example"),
            ("a+b=c", "a+2Bb+3Dc"),
            ("two words", "two+20words"),
            ("ü", "+C3+BC"),
        ];
        for (input, expected) in cases {
            assert_eq!(super::encode(input), expected);
        }
    }
}
