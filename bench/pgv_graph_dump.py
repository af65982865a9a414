#!/usr/bin/env python3
"""Dump the graph of a pgvector 0.8 hnsw index for bench/hnsw_graph_study --load.

    pgv_graph_dump.py DB TABLE INDEX OUT

TABLE has an int column id = the row's number in base.f32 (as
bench/pg_bench.sh loads it).  Reads the index's relation file after a
CHECKPOINT (run it where the data directory is readable, with psql on PATH
and PGHOST/PGPORT set) and writes OUT (nodes, their levels and lists, in
hnsw_graph_study's format) and OUT.rows (extra rows of elements that hold
several heap TIDs).  Page layout from pgvector's hnsw.h (facts only): element
tuples (type 1: level, deleted, 10 heap TIDs, neighbour tuple TID, vector),
neighbour tuples (type 2: count, then TIDs, level L first with m slots per
upper level and 2m at level 0).
"""
import struct, subprocess, sys
db, table, index, out = sys.argv[1:5]
P = ['psql', '-X', '-d', db, '-At', '-F', ' ']
def q(sql):
    return subprocess.run(P + ['-c', sql], check=True, capture_output=True, text=True).stdout
q('CHECKPOINT')
datadir = q('SHOW data_directory').strip()
path = datadir + '/' + q(f"SELECT pg_relation_filepath('{index}')").strip()
tid2id = {}
for line in q(f"SELECT (ctid::text::point)[0]::bigint, (ctid::text::point)[1]::int, id FROM {table}").split('\n'):
    if line:
        b, o, i = map(int, line.split())
        tid2id[(b, o)] = i
data = open(path, 'rb').read()
BLCKSZ = 8192
nblocks = len(data) // BLCKSZ
def ip(buf, off):
    hi, lo, pos = struct.unpack_from('<HHH', buf, off)
    return ((hi << 16) | lo, pos)
meta = data[0:BLCKSZ]
magic, version, dims, m, efc, eblk, eoff, elevel, ins = struct.unpack_from('<IIIHHIHhI', meta, 24)
elements = {}   # (blk, off) -> (level, heaptids, neighbortid)
neighbors = {}  # (blk, off) -> list of tids
for blk in range(1, nblocks):
    page = data[blk * BLCKSZ:(blk + 1) * BLCKSZ]
    lower = struct.unpack_from('<H', page, 12)[0]
    nitems = (lower - 24) // 4
    for i in range(nitems):
        lp = struct.unpack_from('<I', page, 24 + 4 * i)[0]
        off, flags, ln = lp & 0x7FFF, (lp >> 15) & 3, lp >> 17
        if flags != 1:
            continue
        t = page[off]
        if t == 1:
            level, deleted = page[off + 1], page[off + 2]
            tids = [ip(page, off + 4 + 6 * k) for k in range(10)]
            tids = [x for x in tids if x[1] != 0]
            elements[(blk, i + 1)] = (level, tids, ip(page, off + 64), deleted)
        elif t == 2:
            count = struct.unpack_from('<H', page, off + 2)[0]
            neighbors[(blk, i + 1)] = [ip(page, off + 4 + 6 * k) for k in range(count)]
keys = sorted(k for k, e in elements.items() if not e[3] and e[1])
node = {k: n for n, k in enumerate(keys)}
maxlevel = max(elements[k][0] for k in keys)
with open(out, 'wb') as f, open(out + '.rows', 'wb') as fr:
    f.write(struct.pack('<iii', len(keys), elevel, node[(eblk, eoff)]))
    for k in keys:
        level, tids, ntid, _ = elements[k]
        ids = [tid2id[t] for t in tids]
        f.write(struct.pack('<ii', ids[0], level))
        for extra in ids[1:]:
            fr.write(struct.pack('<ii', node[k], extra))
        slots = neighbors[ntid]
        for lc in range(level + 1):
            start = (level - lc) * m
            cnt = 2 * m if lc == 0 else m
            lst = [node[t] for t in slots[start:start + cnt] if t[1] != 0 and t in node]
            f.write(struct.pack('<i', len(lst)))
            f.write(struct.pack('<%di' % len(lst), *lst))
print(len(keys), 'nodes, max level', maxlevel, 'entry level', elevel, 'm', m)
