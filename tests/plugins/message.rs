//! The DATA stage: message edits in chain order, spooling, the Received field, MIME.

use super::*;

#[test]
fn data_plugins_edit_the_message_in_chain_order_and_large_bodies_spool_to_disk() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["headers", "measure"]

[upstream]
address = "{}"
client_address = "none"

[spool]
memory_limit = 4096

[plugins.headers]
path = "{}"
config = {{ remove = ["Authentication-Results"], add = [{{ name = "X-Received-Via", value = "{{listener}} from {{client_ip}}" }}], subject_tags = [{{ tag = "[EXTERNAL]", sender_domain_not_in = ["example.com"] }}] }}

[plugins.measure]
path = "{}"
config = {{ mode = "measure-body", stage = "data" }}
"#,
        upstream.address(),
        component("headers").display(),
        component("fault-plugin").display()
    ));
    let mut body = Vec::new();
    for n in 0..20_000 {
        let line = if n % 7 == 0 {
            format!(".dot line {n}\r\n")
        } else {
            format!("line {n} \u{e9}t\u{e9} 8-bit text\r\n")
        };
        body.extend_from_slice(line.as_bytes());
    }
    let stuffed = String::from_utf8(body.clone())
        .unwrap()
        .replace("\r\n.", "\r\n..")
        .replacen('.', "..", 1);
    let head = "Subject: hello\r\nAuthentication-Results: forged\r\nFrom: a@outside.test\r\n\r\n";
    let mut wire = head.as_bytes().to_vec();
    wire.extend_from_slice(stuffed.as_bytes());
    wire.extend_from_slice(b".\r\n");
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    let reply = client.send_message("a@outside.test", &["b@example.com"], &wire);
    assert_eq!(reply.code, 250, "{reply:?}");
    let expected = format!(
        "Subject: [EXTERNAL] hello\r\nFrom: a@outside.test\r\nX-Received-Via: test from 127.0.0.1\r\n\
         X-Body-Size: {}\r\nX-Body-Lines: 20000\r\n\r\n{stuffed}.\r\n",
        body.len()
    );
    let messages = upstream.wait_messages(1);
    assert_eq!(String::from_utf8_lossy(&messages[0]), expected);
}

#[test]
fn the_received_field_goes_above_what_plugins_edited() {
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        r#"plugins = ["headers"]

[server]
hostname = "proxy.test"

[upstream]
address = "{}"
client_address = "none"
received_header = true

[plugins.headers]
path = "{}"
config = {{ add = [{{ name = "X-Checked", value = "yes" }}] }}
"#,
        upstream.address(),
        component("headers").display(),
    ));
    let mut client = proxy.client();
    client.expect("EHLO client.test", 250);
    let reply = client.send_message(
        "a@example.org",
        &["b@example.com"],
        b"Subject: hi\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    let message = String::from_utf8(upstream.wait_messages(1).remove(0)).unwrap();
    // 127.0.0.1 has a verified name on every machine ("localhost", or /etc/hosts).
    let (from, rest) = message.split_once(" [127.0.0.1])\r\n").unwrap();
    assert!(
        from.starts_with("Received: from client.test ("),
        "{message}"
    );
    assert!(!from.contains("unknown"), "{message}");
    assert!(
        rest.starts_with("\tby proxy.test (Portcullis) with ESMTP id "),
        "{message}"
    );
    assert!(
        rest.contains("\r\n\tfor <b@example.com>;\r\n\t"),
        "{message}"
    );
    assert!(
        rest.ends_with(" +0000\r\nSubject: hi\r\nX-Checked: yes\r\n\r\nbody\r\n.\r\n"),
        "{message}"
    );
}

#[test]
fn attachments_refuses_blocked_types_in_real_multipart_messages() {
    if !common::require_program("python3") {
        return;
    }
    let upstream = RecordingUpstream::start();
    let proxy = Proxy::start_with(&format!(
        "plugins = [\"attachments\"]\n\n[upstream]\naddress = \"{}\"\nclient_address = \"none\"\n\n[plugins.attachments]\npath = \"{}\"\n",
        upstream.address(),
        component("attachments").display()
    ));
    let port = proxy.address.port();
    let refused = "554 5.7.1 Attachment \"invoice.pdf.exe\" is of a blocked type; message refused";
    assert_eq!(
        send_with_attachment(port, "invoice.pdf.exe", false),
        refused
    );
    assert_eq!(send_with_attachment(port, "invoice.pdf.exe", true), refused);
    assert_eq!(
        send_with_attachment(port, "invoice.pdf", false),
        "250 accepted"
    );
    assert_eq!(
        send_with_attachment(port, "invoice.pdf", true),
        "250 accepted"
    );
    let messages = upstream.wait_messages(2);
    assert_eq!(messages.len(), 2);
    assert!(
        messages
            .iter()
            .all(|m| String::from_utf8_lossy(m).contains("invoice.pdf\""))
    );
}
