#!/usr/bin/env python3
"""Opens SESSIONS sessions to the proxy and holds them, each past EHLO: plaintext, or
after STARTTLS and a second EHLO. Prints the proxy's RSS (from /proc) before and with
the sessions open. Usage: tls_idle.py PID PORT CAFILE SESSIONS plain|tls"""
import smtplib, ssl, sys, time

pid, port, ca, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]

def rss_kib():
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

context = ssl.create_default_context(cafile=ca)
before = rss_kib()
held = []
started = time.time()
for _ in range(count):
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("bench.example")
    if mode == "tls":
        client._host = "mail.example.test"
        client.starttls(context=context)
        client.ehlo("bench.example")
    held.append(client)
time.sleep(1)
after = rss_kib()
print(f"{mode}: {count} sessions past EHLO in {time.time() - started:.1f} s; "
      f"proxy RSS {before // 1024} MiB before, {after // 1024} MiB with them: "
      f"{(after - before) / count:.1f} KiB per session")
