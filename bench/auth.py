#!/usr/bin/env python3
"""Edge AUTH under attack, measured from outside the proxy.

  auth.py burst PID PORT ATTEMPTS ADDRESSES
      ATTEMPTS simultaneous AUTH PLAIN guesses spread over ADDRESSES source addresses
      (127.0.1.x, 127.0.2.x ...). While they run, a bystander from 127.0.0.250 opens a
      session (greeting and EHLO) every 50 ms. Prints the replies by code, the proxy's
      peak and settled RSS, and the bystander's slowest session start.
  auth.py timing PORT LOGIN ROUNDS
      ROUNDS wrong-password attempts for LOGIN and for unknown logins (a new name each
      time), interleaved, one at a time; prints the median and quartiles of each, ms.
"""
import asyncio, base64, statistics, sys, time


def auth_line(login, password):
    token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
    return f"AUTH PLAIN {token}\r\n".encode()


async def reply(reader, timeout=120):
    """The code of one (possibly multi-line) reply; None if the connection closed or
    nothing came within the timeout."""
    try:
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                return None
            if line[3:4] != b"-":
                return int(line[:3])
    except asyncio.TimeoutError:
        return None


async def session(port, source, timeout=120):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout
    )
    await reply(reader)
    writer.write(b"EHLO bench.example\r\n")
    await reply(reader)
    return reader, writer


def status(pid, field):
    with open(f"/proc/{pid}/status") as lines:
        for line in lines:
            if line.startswith(field):
                return int(line.split()[1]) // 1024


async def burst(pid, port, attempts, addresses):
    sources = [f"127.0.{1 + n // 200}.{1 + n % 200}" for n in range(addresses)]
    before = status(pid, "VmRSS:")
    # Opened 100 at a time (a thousand SYNs at once overflow the listen queue), then
    # every guess is sent at once.
    opened = []
    for start in range(0, attempts, 100):
        opened += await asyncio.gather(
            *(session(port, sources[n % addresses]) for n in range(start, min(start + 100, attempts)))
        )
    slowest = 0.0
    done = asyncio.Event()

    async def bystander():
        nonlocal slowest
        while not done.is_set():
            started = time.monotonic()
            reader, writer = await session(port, "127.0.0.250")
            slowest = max(slowest, time.monotonic() - started)
            writer.close()
            await asyncio.sleep(0.05)

    async def guess(reader, writer, n):
        writer.write(auth_line("alice", f"guess{n}"))
        code = await reply(reader)
        writer.close()
        return code

    watcher = asyncio.create_task(bystander())
    started = time.monotonic()
    codes = await asyncio.gather(*(guess(r, w, n) for n, (r, w) in enumerate(opened)))
    elapsed = time.monotonic() - started
    done.set()
    await watcher
    await asyncio.sleep(5)
    counts = {code: codes.count(code) for code in sorted(set(codes), key=str)}
    print(
        f"{attempts} attempts from {addresses} addresses in {elapsed:.1f} s: replies {counts}; "
        f"RSS {before} MiB before, peak {status(pid, 'VmHWM:')} MiB, "
        f"{status(pid, 'VmRSS:')} MiB 5 s after; bystander's slowest greeting and EHLO {slowest * 1000:.0f} ms"
    )


async def timing(port, login, rounds):
    """A wrong password for LOGIN, and one for a different unknown name each round."""
    times = {f"{login} (known)": [], "unknown names": []}
    for n in range(rounds):
        for key, name in zip(times, (login, f"nobody{n}")):
            reader, writer = await session(port, "127.0.0.2")
            started = time.monotonic()
            writer.write(auth_line(name, f"wrong{n}"))
            code = await reply(reader)
            times[key].append((time.monotonic() - started) * 1000)
            assert code == 535, code
            writer.close()
    for key, samples in times.items():
        q = statistics.quantiles(samples, n=4)
        print(f"  {key}: median {q[1]:.2f} ms (quartiles {q[0]:.2f}-{q[2]:.2f})")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "burst":
        pid, port, attempts, addresses = map(int, sys.argv[2:6])
        asyncio.run(burst(pid, port, attempts, addresses))
    else:
        port, login, rounds = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
        asyncio.run(timing(port, login, rounds))
