# Per-index HnswScan adapters: a backend that cached one adapter uses a new
# version once it is committed (not before), and the adapter survives a
# restart and a pg_dump/pg_restore.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecSession;

my $node = PostgreSQL::Test::Cluster->new('lora_index');
$node->init;
$node->start;

# queries are a fixed rank-2 linear distortion of their positives
$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, v vector(8));
	INSERT INTO items SELECT i, (SELECT array_agg(sin(i * j * 0.37 + j)::real) FROM generate_series(1, 8) j)::vector
		FROM generate_series(1, 400) i;
	CREATE INDEX items_v ON items USING gnnhnsw (v vector_cosine_ops) WITH (m = 8);
	CREATE TABLE pairs AS SELECT id, ARRAY[a[1] + 2.5 * a[2], a[2], a[3] - 2 * a[4], a[4],
			a[5], a[6], a[7], a[8]]::vector AS q, v AS p
		FROM (SELECT id, v, v::real[] AS a FROM items WHERE id % 2 = 0) s;
	-- other clicks, distorted in other coordinates: version 2 learns them,
	-- so it differs from version 1 (training keeps an adapter whose epochs
	-- do not beat it significantly, and more epochs on the first pairs
	-- did not, once builds linked new elements to 2m)
	CREATE TABLE pairs2 AS SELECT id, ARRAY[a[1], a[2], a[3], a[4], a[5] + 2.5 * a[6], a[6],
			a[7] - 2 * a[8], a[8]]::vector AS q, v AS p
		FROM (SELECT id, v, v::real[] AS a FROM items WHERE id % 2 = 0) s;
});

# what the adapted scan returns for a few queries (ids in scan order)
my $scan_sql = q{SET enable_seqscan = off; SET gnnvec.adapt = on;
	SELECT string_agg(t.ids, ';' ORDER BY p.id) FROM pairs p, LATERAL (SELECT string_agg(id::text, ',') AS ids
		FROM (SELECT id FROM items ORDER BY v <=> p.q LIMIT 10) x) t WHERE p.id <= 40};
my $train_sql = q{SET gnnvec.lora_alpha = 1; SELECT count(*) FROM gnnvec_train('items_v',
	'SELECT q, p FROM %s', scope => 'HnswScan', epochs => %d, learning_rate => 0.05, seed => %d)};

my $plain = $node->safe_psql('postgres', $scan_sql);

# a long-lived session that caches the adapter
my $session = GnnvecSession->new($node);

is($session->query($scan_sql), $plain, 'no adapter: the session scans with the query as given');
$node->safe_psql('postgres', sprintf($train_sql, 'pairs', 1, 42));
my $v1 = $session->query($scan_sql);
isnt($v1, $plain, 'the session picks up version 1 after its commit');

# a second session trains version 2 but does not commit yet
my $writer = GnnvecSession->new($node);
$writer->send("BEGIN;\n" . sprintf($train_sql, 'pairs2', 4, 7) . ";\nSELECT 'TRAINED';\n");
$writer->wait_for(qr/TRAINED/);
is($session->query($scan_sql), $v1, 'an uncommitted adapter is not seen by other backends');
$writer->send("COMMIT;\nSELECT 'COMMITTED';\n");
$writer->wait_for(qr/COMMITTED/);
$writer->quit;
is($session->query(q{SELECT version FROM gnnvec_model_info('items_v')}), '2', 'version 2 after commit');
my $v2 = $session->query($scan_sql);
isnt($v2, $v1, 'the caching backend scans with the committed version');
$session->quit;

$node->restart;
is($node->safe_psql('postgres', $scan_sql), $v2, 'the adapter survives a restart');

my $dump = $node->basedir . '/lora.dump';
command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump -Fc');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
is($node->safe_psql('restored', q{SELECT scope || ' ' || kind || ' ' || version FROM gnnvec_model_info('items_v')}),
	'HnswScan lora 2', 'the restored adapter is found by the index name');
is($node->safe_psql('restored', $scan_sql), $v2, 'the restored adapter scans as before');

done_testing();
