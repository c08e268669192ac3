//! Relaying, with a scripted upstream behind the session: what the upstream receives,
//! and which of its replies the client hears.

use super::{
    scripted::{Answer, ScriptedUpstream},
    *,
};

const EXTENSIONS: &[&str] = &[
    "PIPELINING",
    "8BITMIME",
    "SIZE 10240000",
    "XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT REVERSE_NAME",
];

fn relaying_to(upstream: &ScriptedUpstream) -> DuplexStream {
    start(context_from(parse_for(&upstream.address.to_string(), "")))
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
    let upstream = ScriptedUpstream::start(EXTENSIONS, &[]).await;
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
        ["250 2.0.0 Ok: queued as SCRIPTED"]
    );

    let xclient = upstream.commands_starting("XCLIENT").join(" ");
    assert!(xclient.contains("ADDR=192.0.2.1"), "{xclient}");
    assert!(xclient.contains("HELO=client.example"), "{xclient}");
    let commands = upstream.commands();
    let transaction = commands
        .iter()
        .skip_while(|command| !command.starts_with("XCLIENT"))
        .skip(1)
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(
        transaction,
        [
            "EHLO client.example",
            "MAIL FROM:<a@b.example> BODY=8BITMIME",
            "RCPT TO:<c@d.example>",
            "DATA",
        ]
    );
    let messages = upstream.messages();
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].ends_with(b"Subject: relay\r\n\r\n..a line that starts with a dot\r\nend\r\n"),
        "{}",
        String::from_utf8_lossy(&messages[0])
    );
}

#[tokio::test]
async fn pipelined_commands_get_the_upstreams_own_replies_in_order() {
    let refusal = "550 5.1.1 <nobody@d.example>: Recipient address rejected: User unknown";
    let upstream = ScriptedUpstream::start(
        EXTENSIONS,
        &[(
            "RCPT TO:<nobody@",
            Answer::Reply(
                "550 5.1.1 <nobody@d.example>: Recipient address rejected: User unknown\r\n",
            ),
        )],
    )
    .await;
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
    assert_eq!(upstream.commands_starting("RCPT").len(), 3);
}

#[tokio::test]
async fn an_upstream_that_drops_at_the_end_of_data_is_a_451_never_a_250() {
    let upstream = ScriptedUpstream::start(EXTENSIONS, &[(".", Answer::Close)]).await;
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
}

#[tokio::test]
async fn an_upstream_refusal_of_mail_is_relayed_and_what_was_pipelined_behind_it_fails() {
    let upstream = ScriptedUpstream::start(
        EXTENSIONS,
        &[(
            "MAIL",
            Answer::Reply("553 5.7.1 <a@b.example>: Sender address rejected: not owned\r\n"),
        )],
    )
    .await;
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
