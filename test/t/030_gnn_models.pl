# GNN models in the model table: every backend sees a new version once it
# is committed (and not before), and models survive a restart and a
# pg_dump/pg_restore (where the index gets a new OID).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecSession;

my $node = PostgreSQL::Test::Cluster->new('gnn');
$node->init;
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	-- 30 topics in 8 dimensions, 10 noisy views each (sigma 1.2); a pair is
	-- two views of a topic, so that the trained models rank by more than
	-- raw distance (their blends pass the sign test) and versions differ
	SELECT setseed(0.42);
	CREATE TABLE normal AS SELECT i, j, sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS z
		FROM generate_series(0, 329) i, generate_series(1, 8) j;
	CREATE TABLE items (id int PRIMARY KEY, v vector(8));
	INSERT INTO items SELECT n.i - 29, array_agg((c.z + 1.2 * n.z)::real ORDER BY n.j)::vector
		FROM normal n JOIN normal c ON c.i = (n.i - 30) % 30 AND c.j = n.j WHERE n.i >= 30 GROUP BY n.i;
	CREATE INDEX items_v ON items USING gnnhnsw (v vector_l2_ops) WITH (m = 8);
	CREATE TABLE pairs AS SELECT a.v AS q, b.v AS p FROM items a JOIN items b ON b.id = a.id + 150 WHERE a.id <= 150;
	SELECT count(*) FROM gnnvec_train('items_v', 'SELECT q, p FROM pairs', epochs => 2, hidden => 8,
		validation_fraction => 0);
});

# scores of one query, as "id:score" rounded, in rank order
my $scores_sql = q{SELECT string_agg(i.id || ':' || round(s.score::numeric, 6), ',')
	FROM gnnvec_search('items_v', (SELECT q FROM pairs LIMIT 1), 10) s JOIN items i ON i.ctid = s.tid};

# a long-lived session that caches the model
my $session = GnnvecSession->new($node);

my $v1 = $session->query($scores_sql);
ok($v1 =~ /^\d+:/, 'the session scores with version 1');

# a second session writes version 2 but does not commit yet
my $writer = GnnvecSession->new($node);
$writer->send("BEGIN;\nSELECT count(*) FROM gnnvec_train('items_v', 'SELECT q, p FROM pairs', epochs => 3, hidden => 8, validation_fraction => 0, seed => 9);\nSELECT 'TRAINED';\n");
$writer->wait_for(qr/TRAINED/);
is($session->query($scores_sql), $v1, 'an uncommitted version is not seen by other backends');
is($session->query(q{SELECT version FROM gnnvec_model_info('items_v')}), '1', 'still version 1 before commit');

$writer->send("COMMIT;\nSELECT 'COMMITTED';\n");
$writer->wait_for(qr/COMMITTED/);
$writer->quit;
is($session->query(q{SELECT version FROM gnnvec_model_info('items_v')}), '2', 'version 2 after commit');
my $v2 = $session->query($scores_sql);
isnt($v2, $v1, 'the caching backend scores with the committed version');

# a rolled-back version leaves the committed one in place
$node->safe_psql('postgres', q{BEGIN; SELECT gnnvec_feedback('items_v', (SELECT q FROM pairs LIMIT 1), (SELECT p FROM pairs LIMIT 1)); SELECT gnnvec_feedback_train('items_v'); ROLLBACK;});
is($session->query($scores_sql), $v2, 'a rolled-back version is never seen');
$session->quit;

# restart
$node->restart;
is($node->safe_psql('postgres', $scores_sql), $v2, 'the model survives a restart');

# dump and restore into another database: the index has a new OID there
my $dump = $node->basedir . '/gnn.dump';
command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump -Fc');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
isnt($node->safe_psql('restored', q{SELECT 'items_v'::regclass::oid}),
	$node->safe_psql('postgres', q{SELECT 'items_v'::regclass::oid}), 'the restored index has a new OID');
is($node->safe_psql('restored', q{SELECT scope || ' ' || kind || ' ' || version FROM gnnvec_model_info('items_v')}),
	'Rerank gnn 2', 'the restored model is found by the index name');
is($node->safe_psql('restored', $scores_sql), $v2, 'the restored model scores as before');

# the next save rebinds the row to the new OID; the old row is gone
$node->safe_psql('restored', q{SELECT gnnvec_feedback('items_v', (SELECT q FROM pairs LIMIT 1), (SELECT p FROM pairs LIMIT 1)); SELECT gnnvec_feedback_train('items_v')});
is($node->safe_psql('restored', q{SELECT count(*) || ' ' || bool_and(index_oid = 'items_v'::regclass) || ' ' || max(version) FROM gnnvec_models}),
	'1 true 3', 'saving rebinds the restored row to the new index');

# a restored model of a dropped index goes with it
$node->safe_psql('restored', 'DROP TABLE items');
is($node->safe_psql('restored', 'SELECT count(*) FROM gnnvec_models'), '0', 'DROP TABLE drops the models');

done_testing();
