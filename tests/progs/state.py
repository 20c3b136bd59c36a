"""A python3 program with live state for Godwit's tests (same protocol as the
C programs: DIR/ready, wait for DIR/go, write PASS or FAIL to DIR/result).

State: a large dict, a generator suspended mid-iteration, a worker thread
counting, a seeded random generator, an open file with an offset."""
import hashlib, os, random, sys, threading, time

d = sys.argv[1]
table = {i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(200_000)}
digest = hashlib.sha256(repr(sorted(table.items())[:5000]).encode()).hexdigest()

def squares():
    n = 0
    while True:
        yield n * n
        n += 1

gen = squares()
for _ in range(1000):
    next(gen)
rng = random.Random(1234)
expected_rng = random.Random(1234)
for _ in range(10):
    rng.random(); expected_rng.random()
count = 0
stop = False
def worker():
    global count
    while not stop:
        count += 1
        time.sleep(0.005)
t = threading.Thread(target=worker, name="counter")
t.start()
f = open(os.path.join(d, "data.txt"), "w+")
f.write("hello python world"); f.flush(); f.seek(6)

def put(name, text):
    with open(os.path.join(d, name + ".tmp"), "w") as g:
        g.write(text)
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))

put("ready", "ready\n")
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)

def check():
    if len(table) != 200_000 or table[4242] != hashlib.sha256(b"4242").hexdigest():
        return "dict lost entries"
    if hashlib.sha256(repr(sorted(table.items())[:5000]).encode()).hexdigest() != digest:
        return "dict contents changed"
    if next(gen) != 1000 * 1000:
        return "generator lost its place"
    if rng.random() != expected_rng.random():
        return "random state changed"
    c0 = count
    time.sleep(0.2)
    if count <= c0:
        return "worker thread stopped"
    if f.read(6) != "python":
        return "file offset lost"
    return None

err = check()
stop = True
t.join()
put("result", "PASS\n" if err is None else "FAIL: " + err + "\n")
