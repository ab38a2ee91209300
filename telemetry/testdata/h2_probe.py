# Connects to the telemetry socket (argv[1]) and says what the server did: "h2" (it sent its
# HTTP/2 SETTINGS frame: served), "closed" (it hung up: refused), or "connect-error ERRNO".
# Used by the tests that check who may reach the node agent's socket.
import socket
import sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect-error", e.errno)
    sys.exit(0)
s.settimeout(5)
try:
    # The client preface, then an empty SETTINGS frame.
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    data = s.recv(64)
except OSError as e:
    print("closed", e.errno)
    sys.exit(0)
print("h2" if len(data) >= 9 and data[3] == 4 else "closed")
