"""python3 multiprocessing: a Pool of 3 workers (pipes, POSIX semaphores in
/dev/shm) mapping work forever and counting completed batches into DIR/count."""
import multiprocessing as mp
import os
import sys
import time


def square(x):
    return x * x


if __name__ == "__main__":
    d = sys.argv[1]
    with mp.Pool(3) as pool:
        n = 0
        while True:
            got = pool.map(square, range(n, n + 10))
            if got != [x * x for x in range(n, n + 10)]:
                sys.exit("wrong results")
            n += 10
            with open(os.path.join(d, "count.tmp"), "w") as f:
                f.write(str(n))
            os.rename(os.path.join(d, "count.tmp"), os.path.join(d, "count"))
            time.sleep(0.01)
