# A Python parent talking to a child started with
# subprocess.Popen(stdin=PIPE, stdout=PIPE) (tests/progs/extio.c in echo
# mode). Only the child is dumped; after its restore (with --inherit-fd
# giving it the same two pipes again) the parent talks to it through its
# original Popen pipes. Usage: popen.py EXTIO DIR; writes DIR/child (the
# child's PID), waits for DIR/go, writes PASS or FAIL: ... to DIR/result.
import os
import subprocess
import sys
import time

extio, d = sys.argv[1], sys.argv[2]
p = subprocess.Popen([extio, d, "echo"], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def result(text):
    with open(os.path.join(d, "result.tmp"), "w") as f:
        f.write(text + "\n")
    os.rename(os.path.join(d, "result.tmp"), os.path.join(d, "result"))
    sys.exit(0)


def talk(msg):
    p.stdin.write(msg)
    p.stdin.flush()
    want = b"echo:" + msg
    got = b""
    while len(got) < len(want):
        chunk = os.read(p.stdout.fileno(), len(want) - len(got))
        if not chunk:
            result("FAIL: end of file from the child")
        got += chunk
    if got != want:
        result("FAIL: got %r, wanted %r" % (got, want))


talk(b"before the dump\n")
with open(os.path.join(d, "child.tmp"), "w") as f:
    f.write("%d\n" % p.pid)
os.rename(os.path.join(d, "child.tmp"), os.path.join(d, "child"))
# The dump ends the child: reap it, so that its PID is free for the restore.
while p.poll() is None:
    time.sleep(0.01)
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
talk(b"after the restore\n")
talk(b"and once more\n")
p.stdin.close()
rest = p.stdout.read()
result("PASS" if rest == b"" else "FAIL: %r after end of file" % rest)
