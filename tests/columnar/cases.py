"""Writes the files of the columnar bad-case tests with pyarrow.

Usage: cases.py OUT_DIR
  mismatch.parquet  `qty` is boolean: it cannot fill an integer column
  ranges.parquet    10 rows in row groups of 3: row 5's qty does not fit a
                    smallint, row 8's id is null, row 9's note has a NUL
  items.parquet     1000 valid rows (uploads), zstd
  ev.parquet        300,000 rows in row groups of 40,000; every 1000th id is
                    null (a reject)
  claims.arrows     a zstd Arrow stream whose buffer claims to decompress to
                    1 TiB (a reader that believed it would abort)
  big.parquet       ROWS rows in ONE row group (bounded memory), if ROWS given
"""

import sys

import struct

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

out = sys.argv[1]

pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()),
                         "qty": pa.array([True, False])}), f"{out}/mismatch.parquet")

ids = [1, 2, 3, 4, 5, 6, 7, None, 9, 10]
qty = [1, 2, 3, 4, 40000, 6, 7, 8, 9, 10]
note = ["a", "b", "c", "d", "e", "f", "g", "h", "nul\x00here", "j"]
pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "qty": pa.array(qty, pa.int64()),
                         "note": pa.array(note)}), f"{out}/ranges.parquet", row_group_size=3)

n = 1000
pq.write_table(pa.table({"id": pa.array(range(1, n + 1), pa.int64()),
                         "qty": pa.array([i % 7 for i in range(n)], pa.int16()),
                         "note": pa.array([f"item {i}" for i in range(n)])}),
               f"{out}/items.parquet", compression="zstd")

n = 300_000
pq.write_table(pa.table({"id": pa.array([None if i % 1000 == 0 else i for i in range(1, n + 1)], pa.int64()),
                         "payload": pa.array([f"row {i}, with a comma" for i in range(1, n + 1)])}),
               f"{out}/ev.parquet", row_group_size=40_000, compression="snappy")

sink = pa.BufferOutputStream()
with ipc.new_stream(sink, pa.schema([("id", pa.int64())]), options=ipc.IpcWriteOptions(compression="zstd")) as w:
    w.write_table(pa.table({"id": pa.array(range(1000), pa.int64())}))
data = sink.getvalue().to_pybytes()
honest = struct.pack("<q", 8000)  # the id buffer's true decompressed length
assert data.count(honest) == 1
open(f"{out}/claims.arrows", "wb").write(data.replace(honest, struct.pack("<q", 1 << 40)))

if len(sys.argv) > 2:
    n = int(sys.argv[2])
    pq.write_table(pa.table({"id": pa.array(range(1, n + 1), pa.int64()),
                             "qty": pa.array([i % 30000 for i in range(n)], pa.int16()),
                             "note": pa.array([f"note number {i} " * 4 for i in range(n)])}),
                   f"{out}/big.parquet", row_group_size=n, compression="snappy")
