"""Writes seeded random rows with pyarrow as Parquet (several row groups, a
given codec), an Arrow IPC file and an Arrow IPC stream (uncompressed, and
compressed: Feather's default LZ4 and a zstd stream), and the same rows
as CSV in the text PostgreSQL reads for each value (the reference).

Usage: write.py OUT_DIR SEED ROWS CODEC
Prints a JSON object: the table definition and the column names.
"""

import datetime
import decimal
import json
import random
import sys
import uuid

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

out, seed, n, codec = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(seed)
decimal.getcontext().prec = 100
EPOCH = datetime.datetime(1970, 1, 1)


def maybe_null(gen):
    return lambda: None if rng.random() < 0.12 else gen()


def ints(lo, hi):
    edges = [lo, hi, 0, 1, -1] if lo < 0 else [lo, hi, 0, 1]
    return maybe_null(lambda: rng.choice(edges) if rng.random() < 0.3 else rng.randint(lo, hi))


def text():
    words = ["a", "é", "日本", "🦀", '"', "\\", "\t", " ", "NULL", "\\N", ",", "\n", "x" * 30]
    return "".join(rng.choice(words) for _ in range(rng.randint(0, 5)))


def decimal_of(precision, scale):
    def gen():
        if rng.random() < 0.2:
            digits = "9" * precision
        else:
            digits = str(rng.randint(0, 10 ** rng.randint(1, precision) - 1))
        sign = rng.choice(["", "-"])
        return decimal.Decimal(sign + digits).scaleb(-scale)

    return maybe_null(gen)


def float64():
    return rng.choice([0.0, -0.0, 1.5, 0.1, 1e-300, 1.7976931348623157e308, 123456.789,
                       float("inf"), float("-inf"), float("nan"), rng.uniform(-1e6, 1e6)])


def float32():
    return rng.choice([0.0, 1.5, 0.1, -2.25, 3.4e38, 1e-30, 16777217.0, 1e10])


def float_text(f):
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "Infinity" if f > 0 else "-Infinity"
    return repr(f)


def ts_text(value, unit, zoned):
    """The ISO text of a timestamp of `unit` (UTC for an instant)."""
    per = {"s": 1, "ms": 1000, "us": 1000_000, "ns": 1000_000_000}[unit]
    secs, frac = divmod(value, per)
    nanos = frac * (1000_000_000 // per)
    t = EPOCH + datetime.timedelta(seconds=secs)
    return t.strftime("%Y-%m-%d %H:%M:%S") + ".%09d" % nanos + ("+00" if zoned else "")


def ts_values(unit):
    per = {"s": 1, "ms": 1000, "us": 1000_000, "ns": 1000_000_000}[unit]
    # Years 1678–2261 fit every unit (nanoseconds since 1970 in an i64).
    lo, hi = -9_200_000_000, 9_200_000_000
    return maybe_null(lambda: rng.randint(lo, hi) * per + rng.randint(0, per - 1))


# name, arrow type, PostgreSQL type, value generator, CSV text of a value
COLUMNS = [
    ("i8", pa.int8(), "smallint", ints(-128, 127), str),
    ("i16", pa.int16(), "smallint", ints(-32768, 32767), str),
    ("i32", pa.int32(), "integer", ints(-2**31, 2**31 - 1), str),
    ("i64", pa.int64(), "bigint", ints(-2**63, 2**63 - 1), str),
    ("u8", pa.uint8(), "smallint", ints(0, 255), str),
    ("u16", pa.uint16(), "integer", ints(0, 65535), str),
    ("u32", pa.uint32(), "bigint", ints(0, 2**32 - 1), str),
    ("u64", pa.uint64(), "numeric", ints(0, 2**64 - 1), str),
    ("i32n", pa.int32(), "numeric(12,2)", ints(-2**31, 2**31 - 1), str),
    ("i16d", pa.int16(), "double precision", ints(-32768, 32767), str),
    ("f32", pa.float32(), "real", maybe_null(float32), float_text),
    ("f64", pa.float64(), "double precision", maybe_null(float64), float_text),
    ("f64n", pa.float64(), "numeric", maybe_null(float64), lambda f: numeric_text(f)),
    ("f32d", pa.float32(), "double precision", maybe_null(float32), None),
    ("d128", pa.decimal128(38, 10), "numeric", decimal_of(38, 10), lambda d: format(d, "f")),
    ("d128s", pa.decimal128(10, 2), "numeric(12,2)", decimal_of(10, 2), lambda d: format(d, "f")),
    ("d128i", pa.decimal128(18, 0), "numeric", decimal_of(18, 0), lambda d: format(d, "f")),
    # Rounded to the column's scale; a precision past 38 digits.
    ("d128r", pa.decimal128(9, 4), "numeric(8,2)", decimal_of(9, 4), lambda d: format(d, "f")),
    ("d128w", pa.decimal128(20, 3), "numeric(40,2)", decimal_of(20, 3), lambda d: format(d, "f")),
    ("d256", pa.decimal256(76, 20), "numeric", decimal_of(76, 20), lambda d: format(d, "f")),
    ("b", pa.bool_(), "boolean", maybe_null(lambda: rng.random() < 0.5), lambda b: "true" if b else "false"),
    ("s", pa.string(), "text", maybe_null(text), str),
    ("ls", pa.large_string(), "varchar(200)", maybe_null(text), str),
    ("dict", pa.dictionary(pa.int32(), pa.string()), "text", maybe_null(lambda: rng.choice(["red", "green", "blue", ""])), str),
    ("sd", pa.string(), "date", maybe_null(lambda: rng.choice(["2024-02-29", "1999-12-31", "0001-01-01", "Jan 5 2020", "infinity"])), str),
    ("sn", pa.string(), "numeric", maybe_null(lambda: rng.choice(["1e3", " 12.50 ", "-0", "NaN", "1.5e-7"])), str),
    ("d32", pa.date32(), "date", maybe_null(lambda: rng.randint(-719162, 2932896)), lambda d: (datetime.date(1970, 1, 1) + datetime.timedelta(days=d)).isoformat()),
    ("d64", pa.date64(), "date", maybe_null(lambda: rng.randint(-719162, 2932896) * 86_400_000), lambda d: (datetime.date(1970, 1, 1) + datetime.timedelta(days=d // 86_400_000)).isoformat()),
    ("ts_s", pa.timestamp("s"), "timestamp", ts_values("s"), lambda v: ts_text(v, "s", False)),
    ("ts_ms", pa.timestamp("ms", tz="UTC"), "timestamptz", ts_values("ms"), lambda v: ts_text(v, "ms", True)),
    ("ts_us", pa.timestamp("us", tz="America/New_York"), "timestamptz", ts_values("us"), lambda v: ts_text(v, "us", True)),
    ("ts_ns", pa.timestamp("ns"), "timestamp", ts_values("ns"), lambda v: ts_text(v, "ns", False)),
    ("ts_nsz", pa.timestamp("ns", tz="+05:30"), "timestamptz", ts_values("ns"), lambda v: ts_text(v, "ns", True)),
    # An instant into a zoneless column: its wall time in the load's zone (UTC).
    ("ts_zn", pa.timestamp("us", tz="UTC"), "timestamp", ts_values("us"), lambda v: ts_text(v, "us", False)),
    # A wall time into a timestamptz column: in the load's zone (UTC).
    ("ts_nz", pa.timestamp("ms"), "timestamptz", ts_values("ms"), lambda v: ts_text(v, "ms", False)),
    ("bin", pa.binary(), "bytea", maybe_null(lambda: rng.randbytes(rng.randint(0, 20))), lambda b: "\\x" + b.hex()),
    ("u", pa.binary(16), "uuid", maybe_null(lambda: uuid.UUID(int=rng.getrandbits(128)).bytes), lambda b: str(uuid.UUID(bytes=b))),
    ("lst", pa.list_(pa.int64()), "jsonb", maybe_null(lambda: [rng.choice([None, rng.randint(-9, 9)]) for _ in range(rng.randint(0, 4))]), json.dumps),
    ("st", pa.struct([("a", pa.int32()), ("b", pa.string())]), "jsonb", maybe_null(lambda: {"a": rng.choice([None, rng.randint(0, 99)]), "b": rng.choice([None, "x", 'q"uote'])}), json.dumps),
    ("mp", pa.map_(pa.string(), pa.int32()), "jsonb", maybe_null(lambda: [(k, rng.randint(0, 9)) for k in rng.sample("abcdef", rng.randint(0, 3))]), lambda m: json.dumps(dict(m))),
]
# f32d's text: the float4 value widened, as PostgreSQL's float4 → float8.
F32D = next(i for i, c in enumerate(COLUMNS) if c[0] == "f32d")

rows = [[gen() for (_, _, _, gen, _) in COLUMNS] for _ in range(n)]
arrays = [pa.array([r[i] for r in rows], type=c[1]) for i, c in enumerate(COLUMNS)]
table = pa.table([pa.array(range(1, n + 1), pa.int64())] + arrays,
                 names=["id"] + [c[0] for c in COLUMNS])

pq.write_table(table, f"{out}/data.parquet", row_group_size=max(1, n // 3),
               compression=None if codec == "none" else codec, use_dictionary=True)
with ipc.new_file(f"{out}/data.arrow", table.schema) as w:
    w.write_table(table, max_chunksize=max(1, n // 2))
with ipc.new_stream(f"{out}/data.arrows", table.schema) as w:
    w.write_table(table, max_chunksize=max(1, n // 4))
# Compressed IPC: Feather v2 as pyarrow writes it by default (LZ4 frames),
# and a zstd stream.
feather.write_feather(table, f"{out}/data.feather", chunksize=max(1, n // 3))
with ipc.new_stream(f"{out}/data.zstd.arrows", table.schema,
                    options=ipc.IpcWriteOptions(compression="zstd")) as w:
    w.write_table(table, max_chunksize=max(1, n // 4))

def csv_field(v):
    """Quoted text, or an empty unquoted field: NULL for COPY."""
    return "" if v is None else '"' + v.replace('"', '""') + '"'


def numeric_text(f):
    """A double as numeric: its shortest round-trip digits, no `.0`."""
    t = float_text(f)
    return t[:-2] if t.endswith(".0") else t


# The CSV PostgreSQL loads: f32d is read back widened from the float32 array.
f32d = arrays[F32D].to_pylist()
with open(f"{out}/data.csv", "w", newline="") as f:
    f.write(",".join(["id"] + [c[0] for c in COLUMNS]) + "\n")
    for k, r in enumerate(rows):
        fields = [str(k + 1)]
        for i, (name, _, _, _, show) in enumerate(COLUMNS):
            v = r[i]
            if i == F32D:
                v, show = f32d[k], float_text
            fields.append(csv_field(None if v is None else show(v)))
        f.write(",".join(fields) + "\n")

print(json.dumps({
    "table": "(id bigint PRIMARY KEY, " + ", ".join(f"{c[0]} {c[2]}" for c in COLUMNS) + ")",
    "columns": [c[0] for c in COLUMNS],
}))
