use proptest::prelude::*;

use super::*;

fn path(raw: &str) -> Path {
    Path { raw: raw.into() }
}

fn param(keyword: &str, value: Option<&str>) -> Param {
    Param {
        keyword: keyword.into(),
        value: value.map(Into::into),
    }
}

#[test]
fn parses_commands() {
    let cases: Vec<(&str, Command)> = vec![
        (
            "HELO client.example",
            Command::Helo("client.example".into()),
        ),
        ("ehlo [192.0.2.7]", Command::Ehlo("[192.0.2.7]".into())),
        (
            "EHLO [IPv6:2001:db8::1]",
            Command::Ehlo("[IPv6:2001:db8::1]".into()),
        ),
        ("EHLO DESKTOP_42", Command::Ehlo("DESKTOP_42".into())),
        (
            "MAIL FROM:<a@example.com>",
            Command::Mail(MailCommand {
                reverse_path: path("<a@example.com>"),
                params: vec![],
            }),
        ),
        (
            "mail from: <> SIZE=100 BODY=8BITMIME",
            Command::Mail(MailCommand {
                reverse_path: path("<>"),
                params: vec![param("SIZE", Some("100")), param("BODY", Some("8BITMIME"))],
            }),
        ),
        (
            "MAIL FROM:<\"john doe\"@example.com> SMTPUTF8",
            Command::Mail(MailCommand {
                reverse_path: path("<\"john doe\"@example.com>"),
                params: vec![param("SMTPUTF8", None)],
            }),
        ),
        (
            "MAIL FROM:<@relay.example:a@example.com>",
            Command::Mail(MailCommand {
                reverse_path: path("<@relay.example:a@example.com>"),
                params: vec![],
            }),
        ),
        (
            "RCPT TO:<Postmaster>",
            Command::Rcpt(RcptCommand {
                forward_path: path("<Postmaster>"),
                params: vec![],
            }),
        ),
        (
            "RCPT TO:<用户@例子.广告> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40y",
            Command::Rcpt(RcptCommand {
                forward_path: path("<用户@例子.广告>"),
                params: vec![
                    param("NOTIFY", Some("SUCCESS,FAILURE")),
                    param("ORCPT", Some("rfc822;x+40y")),
                ],
            }),
        ),
        ("DATA", Command::Data),
        ("rset", Command::Rset),
        ("NOOP anything at all", Command::Noop),
        ("QUIT", Command::Quit),
        ("HELP MAIL", Command::Help),
        ("VRFY postmaster", Command::Vrfy("postmaster".into())),
        ("EXPN staff", Command::Expn("staff".into())),
        ("STARTTLS", Command::StartTls),
        (
            "AUTH PLAIN AGFAAGI=",
            Command::Auth("PLAIN AGFAAGI=".into()),
        ),
        ("SEND FROM:<a@b.c>", Command::NotImplemented("SEND")),
        ("SOML FROM:<a@b.c>", Command::NotImplemented("SOML")),
        ("SAML FROM:<a@b.c>", Command::NotImplemented("SAML")),
        ("TURN", Command::NotImplemented("TURN")),
        ("BDAT 100 LAST", Command::NotImplemented("BDAT")),
    ];
    for (line, expected) in cases {
        assert_eq!(parse(line.as_bytes()), Ok(expected), "{line}");
    }
}

#[test]
fn rejects_bad_commands() {
    use CommandError::*;
    let cases: &[(&[u8], CommandError)] = &[
        (b"FOO bar", Unrecognized),
        (b"", Unrecognized),
        (b"MAILFROM:<a@b.c>", Unrecognized),
        (b"HELO", Syntax("a domain name is required")),
        (b"EHLO a b", Syntax("only one domain name is allowed")),
        (b"EHLO bad\x01name", Syntax("invalid domain name")),
        (b"MAIL TO:<a@b.c>", Syntax("expected MAIL FROM:<address>")),
        (
            b"MAIL FROM:a@b.c",
            Syntax("the address must be enclosed in <>"),
        ),
        (b"MAIL FROM:<a@b.c", Syntax("unterminated address")),
        (b"MAIL FROM:<a@b.c>x", Syntax("garbage after the address")),
        (b"MAIL FROM:<ab.c>", Syntax("the address needs a domain")),
        (b"MAIL FROM:<a..b@b.c>", Syntax("invalid local part")),
        (b"MAIL FROM:<a@b..c>", Syntax("invalid domain")),
        (b"MAIL FROM:<a@[300.1.1.1]>", Syntax("invalid domain")),
        (b"RCPT TO:<>", Syntax("the address needs a domain")),
        (b"RCPT TO:<a@b.c> =x", Syntax("invalid parameter keyword")),
        (
            b"RCPT TO:<a@b.c> NOTIFY=",
            Syntax("invalid parameter value"),
        ),
        (b"DATA now", Syntax("this command takes no argument")),
        (b"VRFY", Syntax("an argument is required")),
        (b"MAIL FROM:<\xff@b.c>", NotUtf8),
    ];
    for (line, expected) in cases {
        assert_eq!(
            parse(line),
            Err(expected.clone()),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn path_accessors() {
    let Ok(Command::Mail(mail)) = parse(b"MAIL FROM:<@r.example:a@example.com>") else {
        panic!("expected MAIL");
    };
    assert_eq!(mail.reverse_path.mailbox(), "a@example.com");
    assert!(!mail.reverse_path.is_null());
    assert!(path("<>").is_null());
    assert!(path("<ü@example.com>").is_utf8());
}

/// MAIL and RCPT lines shaped like the grammar, with the characters that matter
/// to it (quotes, backslashes, brackets, spaces, controls, non-ASCII) in every
/// part, or plain arbitrary bytes.
fn command_line() -> impl Strategy<Value = Vec<u8>> {
    let verb = prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "mail from: ", "Rcpt To:"]);
    let local = "[a-z.+\"\\\\ \t\r\n\u{0}ü@<>]{0,8}";
    let domain = "([a-z0-9.-]{0,12}|\\[(127.0.0.1|IPv6:::1|[0-9a-z:.]{0,8})\\])";
    let param = "( [A-Za-z]{1,6}(=[!-~ü\r\n\t ]{0,6})?)";
    let structured = (verb, local, domain, prop::collection::vec(param, 0..3)).prop_map(
        |(verb, local, domain, params)| {
            format!("{verb}<{local}@{domain}>{}", params.concat()).into_bytes()
        },
    );
    prop_oneof![
        4 => structured,
        1 => prop::collection::vec(any::<u8>(), 0..80),
    ]
}

proptest! {
    /// Whatever a client sends (or a plugin's rewrite becomes), parsing does not
    /// panic; a MAIL or RCPT it accepts renders — as the proxy writes it upstream —
    /// to a line without control characters that parses back to the same command.
    #[test]
    fn accepted_paths_render_to_the_line_that_was_checked(line in command_line()) {
        let (rendered, command) = match parse(&line) {
            Ok(Command::Mail(mail)) => (mail.to_string(), Command::Mail(mail)),
            Ok(Command::Rcpt(rcpt)) => (rcpt.to_string(), Command::Rcpt(rcpt)),
            _ => return Ok(()),
        };
        prop_assert!(!rendered.chars().any(char::is_control), "{:?}", rendered);
        prop_assert_eq!(parse(rendered.as_bytes()), Ok(command));
    }
}
