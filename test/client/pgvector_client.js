// A client written for pgvector (node-postgres + the pgvector npm package)
// talks to gnnvec unchanged.  Text mode goes through pgvector's own codec;
// binary mode (which pgvector-node does not implement, and node-postgres
// cannot return for result rows) is checked against pgvector's documented wire
// format, int16 dim, int16 0, float4 x dim, big-endian: parameters as Buffers
// through node-postgres, results through binary COPY (pg-copy-streams).
'use strict';
const pg = require('pg');
const pgvector = require('pgvector/pg');
const { to: copyTo } = require('pg-copy-streams');

let passed = 0, failed = 0;
function check(cond, what) {
  if (cond) passed++;
  else { failed++; console.error('FAIL: ' + what); }
}

function encodeBinary(values, unused = 0, dim = values.length) {
  const buf = Buffer.alloc(4 + 4 * values.length);
  buf.writeInt16BE(dim, 0);
  buf.writeInt16BE(unused, 2);
  values.forEach((v, i) => buf.writeFloatBE(v, 4 + 4 * i));
  return buf;
}

function decodeBinary(buf) {
  const dim = buf.readInt16BE(0);
  const unused = buf.readInt16BE(2);
  const out = [];
  for (let i = 0; i < dim; i++) out.push(buf.readFloatBE(4 + 4 * i));
  return { dim, unused, out };
}

// deterministic float32 values, including awkward ones
function sampleVectors(n, dim) {
  let s = 7;
  const rnd = () => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648; };
  const rows = [];
  for (let r = 0; r < n; r++) {
    const v = [];
    for (let i = 0; i < dim; i++) v.push(Math.fround((rnd() - 0.5) * Math.pow(10, Math.floor(rnd() * 12) - 6)));
    rows.push(v);
  }
  rows.push([Math.fround(0.1), Math.fround(-3.4028234663852886e38), Math.fround(1e-45), 0, -0]
    .concat(new Array(dim - 5).fill(1)));
  return rows;
}

// Rows of a binary COPY: 11-byte signature, flags, extension, then tuples.
function parseBinaryCopy(buf) {
  let off = 11 + 4;
  off += 4 + buf.readInt32BE(off);
  const tuples = [];
  for (;;) {
    const nfields = buf.readInt16BE(off); off += 2;
    if (nfields === -1) break;
    const fields = [];
    for (let f = 0; f < nfields; f++) {
      const len = buf.readInt32BE(off); off += 4;
      fields.push(len < 0 ? null : buf.subarray(off, off + len));
      off += Math.max(len, 0);
    }
    tuples.push(fields);
  }
  return tuples;
}

function copyOut(client, sql) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    const stream = client.query(copyTo(sql));
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

async function main() {
  const admin = new pg.Client({ database: 'postgres' });
  await admin.connect();
  await admin.query('DROP DATABASE IF EXISTS gnnvec_client');
  await admin.query('CREATE DATABASE gnnvec_client');
  await admin.end();

  const client = new pg.Client({ database: 'gnnvec_client' });
  await client.connect();
  await client.query('CREATE EXTENSION gnnvec');
  await pgvector.registerTypes(client);
  await client.query('CREATE TABLE items (id int PRIMARY KEY, embedding vector(8))');

  const rows = sampleVectors(50, 8);
  // text mode, through pgvector.toSql
  for (let i = 0; i < rows.length; i++)
    await client.query('INSERT INTO items VALUES ($1, $2)', [i, pgvector.toSql(rows[i])]);
  const res = await client.query('SELECT id, embedding FROM items ORDER BY id');
  let exact = 0;
  for (const r of res.rows) {
    const want = rows[r.id];
    if (r.embedding.length === want.length && r.embedding.every((x, i) => Math.fround(x) === want[i])) exact++;
  }
  check(res.rows.length === rows.length && exact === rows.length,
        `text round trip exact for ${exact}/${rows.length} rows`);

  // distance ordering with a pgvector-encoded parameter
  const q = rows[3];
  const nn = await client.query('SELECT id, embedding <-> $1 AS d FROM items ORDER BY embedding <-> $1 LIMIT 5', [pgvector.toSql(q)]);
  check(nn.rows[0].id === 3 && nn.rows[0].d === 0, 'nearest neighbour of a stored vector is itself');
  check(nn.rows.every((r, i) => i === 0 || r.d >= nn.rows[i - 1].d), 'results ordered by distance');

  // binary results
  const bin = parseBinaryCopy(await copyOut(client,
    'COPY (SELECT id, embedding FROM items ORDER BY id) TO STDOUT (FORMAT binary)'));
  let binOk = 0;
  for (const [idBuf, vecBuf] of bin) {
    const want = rows[idBuf.readInt32BE(0)];
    const d = decodeBinary(vecBuf);
    if (d.dim === 8 && d.unused === 0 && d.out.every((x, i) => x === want[i])) binOk++;
  }
  check(bin.length === rows.length && binOk === rows.length,
        `binary results decode exactly for ${binOk}/${rows.length} rows`);
  const raw = parseBinaryCopy(await copyOut(client,
    "COPY (SELECT '[1,2.5,-3]'::vector) TO STDOUT (FORMAT binary)"));
  check(raw[0][0].equals(encodeBinary([1, 2.5, -3])), 'binary bytes identical to the pgvector format');

  // binary parameters (a Buffer is sent in binary format)
  await client.query('INSERT INTO items VALUES (1000, $1::vector)', [encodeBinary([1, 2, 3, 4, 5, 6, 7, 8.5])]);
  const back = await client.query('SELECT embedding FROM items WHERE id = 1000');
  check(JSON.stringify(back.rows[0].embedding) === '[1,2,3,4,5,6,7,8.5]', 'binary parameter stored');

  // malformed binary input is an error, not garbage
  for (const [buf, what] of [[encodeBinary([1, 2], 1), 'non-zero reserved field'],
                             [encodeBinary([1, 2], 0, 0), 'zero dimensions'],
                             [encodeBinary([NaN]), 'NaN']]) {
    try {
      await client.query('SELECT $1::vector', [buf]);
      check(false, `binary ${what} rejected`);
    } catch (e) {
      check(/unused|dimension|NaN/.test(e.message), `binary ${what} rejected: ${e.message}`);
    }
  }
  // typmod is checked on binary input too
  try {
    await client.query('INSERT INTO items VALUES (1001, $1)', [encodeBinary([1, 2])]);
    check(false, 'binary typmod mismatch rejected');
  } catch (e) {
    check(/expected 8 dimensions, not 2/.test(e.message), 'binary typmod mismatch rejected: ' + e.message);
  }
  await client.end();
}

main().then(() => {
  console.log(`client: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}).catch((e) => {
  console.error(e);
  console.log(`client: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
