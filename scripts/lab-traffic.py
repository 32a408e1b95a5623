#!/usr/bin/env python3
"""Bounded UDP request/response stream for the lab: sends COUNT datagrams to VIP:53, one every
INTERVAL seconds, from one socket (one flow), waits up to 1 s for each reply, and prints a JSON
summary. A datagram without a reply is a lost packet."""
import json
import socket
import sys
import time

vip, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(1.0)
replied, lost, backends = 0, 0, {}
deadline = time.monotonic() + count * interval + 30
for i in range(count):
    if time.monotonic() > deadline:
        break
    payload = b"seq-%d" % i
    sock.sendto(payload, (vip, 53))
    try:
        while True:
            data, _ = sock.recvfrom(512)
            name, _, echoed = data.partition(b" ")
            if echoed == payload:
                replied += 1
                backends[name.decode()] = backends.get(name.decode(), 0) + 1
                break
    except socket.timeout:
        lost += 1
    time.sleep(interval)
print(json.dumps({"sent": count, "replied": replied, "lost": lost, "backends": backends}))
