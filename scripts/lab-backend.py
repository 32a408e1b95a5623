#!/usr/bin/env python3
"""A lab backend: an HTTP server on ports 80 and 8080 that answers with its name (and the client's
address:port as it saw them; `/bytes/N` answers N bytes, a POST the number of bytes it read), and a
UDP echo on port 53 that prefixes its name. Both listen on every address of both families, the
VIPs on loopback included, so replies leave from the VIP (direct server return)."""
import argparse
import http.server
import socket
import socketserver
import threading


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            if self.path.startswith("/slow/"):
                # /slow/N: stream N lines, one every 100 ms, for long-lived connections.
                lines = int(self.path.split("/")[2])
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(lines * (len(args.name) + 1)))
                self.end_headers()
                for _ in range(lines):
                    self.wfile.write((args.name + "\n").encode())
                    self.wfile.flush()
                    threading.Event().wait(0.1)
                return
            if self.path.startswith("/bytes/"):
                # /bytes/N: N bytes of body, for downloads larger than a path's MTU.
                size = int(self.path.split("/")[2])
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                chunk = b"x" * 65536
                while size > 0:
                    self.wfile.write(chunk[: min(size, len(chunk))])
                    size -= min(size, len(chunk))
                return
            body = f"{args.name} {self.client_address[0]}:{self.client_address[1]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            # Reads the whole body (uploads larger than a path's MTU) and names its size.
            size = int(self.headers.get("Content-Length", "0"))
            left = size
            while left > 0:
                data = self.rfile.read(min(left, 65536))
                if not data:
                    break
                left -= len(data)
            body = f"{args.name} received {size - left}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    class Server6(Server):
        address_family = socket.AF_INET6

        def server_bind(self):
            # IPv6 only: the IPv4 server owns 0.0.0.0 on the same port.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    def udp_echo(family, address):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, 53))
        while True:
            data, peer = sock.recvfrom(2048)
            sock.sendto(args.name.encode() + b" " + data, peer)

    threading.Thread(target=udp_echo, args=(socket.AF_INET, "0.0.0.0"), daemon=True).start()
    threading.Thread(target=udp_echo, args=(socket.AF_INET6, "::"), daemon=True).start()
    for port in (80, 8080):
        v6 = Server6(("::", port), Handler)
        threading.Thread(target=v6.serve_forever, daemon=True).start()
    # Port 8080 too, for VIPs that tests add through the API.
    alt = Server(("0.0.0.0", 8080), Handler)
    threading.Thread(target=alt.serve_forever, daemon=True).start()
    Server(("0.0.0.0", 80), Handler).serve_forever()


if __name__ == "__main__":
    main()
