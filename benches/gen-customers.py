#!/usr/bin/env python3
"""Deterministic `customer` CSV for the demo, the tests and the benchmarks.

usage: gen-customers.py ROWS [--bad EVERY] [--seed N] [--first ID] [--dup-every K] > out.csv

With --bad, every EVERY-th row is made invalid in one of several ways (bad
email, unknown country, negative credit limit, score out of range, bad
timestamp), so a load shows rejects with reasons. Ids run from --first
(default 1); with --dup-every, every K-th row instead reuses an id from
1..ROWS (a key loaded by a file generated without --first).
"""
import random
import sys
import uuid


def main():
    args = sys.argv[1:]
    rows = int(args[0])
    bad = int(args[args.index("--bad") + 1]) if "--bad" in args else 0
    seed = int(args[args.index("--seed") + 1]) if "--seed" in args else 42
    first_id = int(args[args.index("--first") + 1]) if "--first" in args else 1
    dup_every = int(args[args.index("--dup-every") + 1]) if "--dup-every" in args else 0
    rnd = random.Random(seed)
    countries = ["DE", "FR", "US", "GB", "JP", "BR", "IN", "NL", "SE", "CA"]
    segments = ["enterprise", "smb", "consumer", "public"]
    first = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Dennis", "Frances", "Edsger", "Radia"]
    last = ["Lovelace", "Hopper", "Torvalds", "Liskov", "Thompson", "Hamilton", "Ritchie", "Allen", "Dijkstra", "Perlman"]
    out = sys.stdout
    out.write("id,external_id,name,email,country,segment,credit_limit,created_at,active,score\n")
    for n in range(1, rows + 1):
        i = n if dup_every and n % dup_every == 0 else first_id + n - 1
        f, l = rnd.choice(first), rnd.choice(last)
        name = f"{f} {l}"
        if rnd.random() < 0.05:
            name = f'"{l}, {f}"'
        email = f"{f.lower()}.{l.lower()}{i}@example.com"
        country = rnd.choice(countries)
        segment = rnd.choice(segments)
        credit = f"{rnd.randrange(0, 10_000_000) / 100:.2f}"
        ts = f"20{rnd.randrange(10, 25):02d}-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d}T{rnd.randrange(0, 24):02d}:{rnd.randrange(0, 60):02d}:{rnd.randrange(0, 60):02d}Z"
        active = "true" if rnd.random() < 0.8 else "false"
        score = str(rnd.randrange(0, 1001))
        ext = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        if bad and n % bad == 0:
            kind = (n // bad) % 5
            if kind == 0:
                email = "not-an-email"
            elif kind == 1:
                country = "XX"
            elif kind == 2:
                credit = "-5.00"
            elif kind == 3:
                score = "1001"
            else:
                ts = "2021-02-30T12:00:00Z"  # no such day: PostgreSQL refuses it too
        out.write(f"{i},{ext},{name},{email},{country},{segment},{credit},{ts},{active},{score}\n")


if __name__ == "__main__":
    main()
