//! Relaying, with the recording upstream behind the session: what the upstream
//! receives, and which of its replies the client hears.

use std::sync::Arc;

use super::{
    upstream::{Action, RecordingUpstream},
    *,
};

const EXTENSIONS: &[&str] = &[
    "PIPELINING",
    "8BITMIME",
    "SIZE 10240000",
    "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT REVERSE_NAME",
];

/// An upstream announcing [`EXTENSIONS`] that answers `reply` to the first command
/// starting with each prefix of `replies`, and as usual otherwise.
fn upstream(replies: &'static [(&'static str, &'static str)]) -> RecordingUpstream {
    RecordingUpstream::scripted(
        EXTENSIONS,
        Arc::new(move |line| {
            replies
                .iter()
                .find(|(prefix, _)| line.starts_with(prefix))
                .map_or(Action::Default, |(_, reply)| match *reply {
                    "drop" => Action::Drop,
                    reply => Action::Reply(reply.into()),
                })
        }),
    )
}

fn relaying_to(upstream: &RecordingUpstream) -> DuplexStream {
    start(context_from(parse_for(&upstream.address(), "")))
}

/// Greets the session and opens a transaction from a@b.example.
async fn open_transaction(client: &mut DuplexStream) {
    assert_eq!(converse(client, b"", 1).await, ["220"]);
    let cases: &[(&[u8], &str)] = &[
        (b"EHLO client.example\r\n", "250"),
        (b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\n", "250"),
    ];
    expect_codes(client, cases).await;
}

#[tokio::test]
async fn a_message_goes_upstream_as_sent_and_the_client_hears_the_upstreams_250() {
    let upstream = upstream(&[]);
    let mut client = relaying_to(&upstream);
    open_transaction(&mut client).await;
    expect_codes(
        &mut client,
        &[(b"RCPT TO:<c@d.example>\r\n", "250"), (b"DATA\r\n", "354")],
    )
    .await;
    let data = b"Subject: relay\r\n\r\n..a line that starts with a dot\r\nend\r\n.\r\n";
    assert_eq!(
        converse_lines(&mut client, data, 1).await,
        ["250 2.0.0 Ok: queued as Q1"]
    );

    let session = upstream.sessions().remove(0);
    let xclient = session.command_starting("XCLIENT");
    assert!(xclient.contains("ADDR=192.0.2.1"), "{xclient}");
    assert!(xclient.contains("HELO=client.example"), "{xclient}");
    let transaction: Vec<&str> = session
        .commands
        .iter()
        .map(String::as_str)
        .skip_while(|command| !command.starts_with("XCLIENT"))
        .skip(1)
        .collect();
    assert_eq!(
        transaction,
        [
            "EHLO client.example",
            "MAIL FROM:<a@b.example> BODY=8BITMIME",
            "RCPT TO:<c@d.example>",
            "DATA",
        ]
    );
    assert_eq!(session.messages.len(), 1);
    assert!(
        session.messages[0]
            .ends_with(b"Subject: relay\r\n\r\n..a line that starts with a dot\r\nend\r\n.\r\n"),
        "{}",
        String::from_utf8_lossy(&session.messages[0])
    );
}

#[tokio::test]
async fn pipelined_commands_get_the_upstreams_own_replies_in_order() {
    let refusal = "550 5.1.1 <nobody@d.example>: Recipient address rejected: User unknown";
    let upstream = upstream(&[(
        "RCPT TO:<nobody@",
        "550 5.1.1 <nobody@d.example>: Recipient address rejected: User unknown",
    )]);
    let mut client = relaying_to(&upstream);
    open_transaction(&mut client).await;
    let group =
        b"RCPT TO:<c@d.example>\r\nRCPT TO:<nobody@d.example>\r\nRCPT TO:<e@d.example>\r\nDATA\r\n";
    let replies = converse_lines(&mut client, group, 4).await;
    assert_eq!(replies[1], refusal);
    let codes: Vec<&str> = replies.iter().map(|reply| &reply[..3]).collect();
    assert_eq!(codes, ["250", "550", "250", "354"]);
    assert_eq!(
        converse(&mut client, b"Subject: x\r\n\r\nbody\r\n.\r\n", 1).await,
        ["250"]
    );
    assert_eq!(upstream.sessions()[0].messages.len(), 1);
}

#[tokio::test]
async fn an_upstream_that_drops_at_the_end_of_data_is_a_451_never_a_250() {
    let upstream = upstream(&[(".", "drop")]);
    let mut client = relaying_to(&upstream);
    open_transaction(&mut client).await;
    expect_codes(
        &mut client,
        &[(b"RCPT TO:<c@d.example>\r\n", "250"), (b"DATA\r\n", "354")],
    )
    .await;
    let replies = converse_lines(&mut client, b"Subject: x\r\n\r\nbody\r\n.\r\n", 1).await;
    assert_eq!(replies.len(), 1);
    assert!(replies[0].starts_with("451 4."), "{replies:?}");
    // The session carries on: the next transaction opens a new upstream session.
    expect_codes(&mut client, &[(b"MAIL FROM:<a@b.example>\r\n", "250")]).await;
    assert_eq!(upstream.sessions().len(), 2);
}

#[tokio::test]
async fn an_upstream_refusal_of_mail_is_relayed_and_what_was_pipelined_behind_it_fails() {
    let upstream = upstream(&[
        (
            "MAIL",
            "553 5.7.1 <a@b.example>: Sender address rejected: not owned",
        ),
        ("RCPT", "503 5.5.1 Error: need MAIL command"),
        ("DATA", "503 5.5.1 Error: need RCPT command"),
    ]);
    let mut client = relaying_to(&upstream);
    assert_eq!(converse(&mut client, b"", 1).await, ["220"]);
    converse(&mut client, b"EHLO client.example\r\n", 1).await;
    let replies = converse_lines(
        &mut client,
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        3,
    )
    .await;
    assert_eq!(
        replies[0],
        "553 5.7.1 <a@b.example>: Sender address rejected: not owned"
    );
    let codes: Vec<&str> = replies.iter().map(|reply| &reply[..3]).collect();
    assert_eq!(codes, ["553", "503", "503"]);
    assert!(upstream.messages().is_empty());
}
