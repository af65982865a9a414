# Scale-out on PostgreSQL's own sharding (docs/sharding.md): a table
# partitioned by hash over two shard clusters through postgres_fdw foreign
# partitions.  ORDER BY v <-> q LIMIT k on the coordinator runs a gnnhnsw
# index scan on every shard (shipped through the servers' extensions option,
# opened as a cursor, bounded by ef_search and fetch_size) and merges the
# shards' rows; recall against the exact top 10; shard_topk
# (test/shard_topk.sql) finds the same rows through dblink; inserts route to
# their shard; gnnvec.ef_search reaches the shards through the server's options or
# the shard role's settings, never through the coordinator's SET; a shard
# that is down is an error, never a partial answer; a model trained on one
# server serves another once its row is copied with the index OID remapped.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecSession;

my $dims = 24;
my $rows = 4000;

my @shards;
for my $i (1, 2)
{
	my $shard = PostgreSQL::Test::Cluster->new("shard$i");
	$shard->init;
	$shard->start;
	$shard->safe_psql('postgres', qq{
		CREATE EXTENSION gnnvec;
		CREATE TABLE items_s (id int PRIMARY KEY, v vector($dims) NOT NULL);
		-- what a postgres_fdw session on this shard has set
		CREATE VIEW session_settings AS
			SELECT current_setting('gnnvec.ef_search', true) AS ef_search;
	});
	push @shards, $shard;
}

my $coord = PostgreSQL::Test::Cluster->new('coord');
$coord->init;
$coord->start;
my $servers = '';
for my $i (1, 2)
{
	my $shard = $shards[ $i - 1 ];
	my ($host, $port) = ($shard->host, $shard->port);
	$servers .= qq{
		CREATE SERVER shard$i FOREIGN DATA WRAPPER postgres_fdw
			OPTIONS (host '$host', port '$port', dbname 'postgres',
					 extensions 'gnnvec', fetch_size '10', batch_size '200');
		CREATE USER MAPPING FOR CURRENT_USER SERVER shard$i;
		CREATE FOREIGN TABLE items_$i PARTITION OF items
			FOR VALUES WITH (MODULUS 2, REMAINDER @{[ $i - 1 ]})
			SERVER shard$i OPTIONS (table_name 'items_s');
		CREATE FOREIGN TABLE settings_$i (ef_search text)
			SERVER shard$i OPTIONS (table_name 'session_settings');
	};
}
$coord->safe_psql('postgres', qq{
	CREATE EXTENSION gnnvec;
	CREATE EXTENSION postgres_fdw;
	CREATE TABLE items (id int NOT NULL, v vector($dims) NOT NULL) PARTITION BY HASH (id);
	$servers
});

# Rows go in through the coordinator, which routes each to its shard.  The
# generated vectors (seeded) also fill a local table: the exact reference.
$coord->safe_psql('postgres', qq{
	SELECT setseed(0.25);
	CREATE TABLE ref AS SELECT i AS id,
		(SELECT array_agg(random())::real[] FROM generate_series(1, $dims) WHERE i > 0)::vector($dims) AS v
		FROM generate_series(1, $rows) i;
	CREATE TABLE queries AS SELECT i AS id,
		(SELECT array_agg(random())::real[] FROM generate_series(1, $dims) WHERE i > 0)::vector($dims) AS v
		FROM generate_series(1, 50) i;
	INSERT INTO items SELECT id, v FROM ref;
});
for my $i (0, 1)
{
	my $expected = $coord->safe_psql('postgres', qq{
		SELECT count(*) || ' ' || sum(id) FROM ref
		WHERE satisfies_hash_partition('items'::regclass, 2, $i, id)});
	is($shards[$i]->safe_psql('postgres', 'SELECT count(*) || \' \' || sum(id) FROM items_s'),
		$expected, "shard @{[ $i + 1 ]} holds exactly its hash partition's rows");
	$shards[$i]->safe_psql('postgres',
		'CREATE INDEX items_s_v_idx ON items_s USING gnnhnsw (v vector_l2_ops); ANALYZE items_s');
}
$coord->safe_psql('postgres', 'ANALYZE items');

# --- the plan: shards sort by distance through their index, the coordinator merges

my $q = $coord->safe_psql('postgres', 'SELECT v FROM queries WHERE id = 1');
my $topk = "SELECT id FROM items ORDER BY v <-> '$q' LIMIT 10";
my $plan = $coord->safe_psql('postgres', "EXPLAIN (VERBOSE, COSTS OFF) $topk");
like($plan, qr/Limit.*Merge Append.*Foreign Scan on public\.items_1.*Foreign Scan on public\.items_2/s,
	'the coordinator merges the two shards under the LIMIT');
unlike($plan, qr/->\s+Sort\b/, 'and sorts nothing itself');
my @remote = $plan =~ /Remote SQL: (.*)$/mg;
is(scalar(@remote), 2, 'one remote query per shard');
like($remote[0], qr/ORDER BY \(v OPERATOR\(public\.<->\) '\[[^']*\]'\) ASC NULLS LAST$/,
	'the distance ORDER BY is shipped to the shard');

# postgres_fdw runs the remote query as a cursor, planned for a fraction of its
# rows (cursor_tuple_fraction): the shard's index.
like($shards[0]->safe_psql('postgres', "EXPLAIN DECLARE c CURSOR FOR $remote[0]"),
	qr/Index Scan using items_s_v_idx on items_s/, 'the shard plans that cursor as a gnnhnsw index scan');

# without the extensions option the operator is not shippable
$coord->safe_psql('postgres', 'ALTER SERVER shard1 OPTIONS (DROP extensions)');
my @unshipped = $coord->safe_psql('postgres', "EXPLAIN (VERBOSE, COSTS OFF) $topk") =~ /Remote SQL: (.*)$/mg;
unlike($unshipped[0], qr/ORDER BY/, 'without extensions \'gnnvec\' the shard is asked for every row, unsorted');
$coord->safe_psql('postgres', q{ALTER SERVER shard1 OPTIONS (ADD extensions 'gnnvec')});

# Over the partitioned table the LIMIT stays on the coordinator (the shard's
# cursor is bounded by ef_search and fetch_size); a query over the foreign
# partitions themselves, one subquery each, ships every LIMIT too.
my $per_shard = join(' UNION ALL ',
	map { "(SELECT id, v <-> '$q' AS d FROM items_$_ ORDER BY v <-> '$q' LIMIT 10)" } 1, 2);
$per_shard = "SELECT id FROM ($per_shard) s ORDER BY d LIMIT 10";
my @limited = $coord->safe_psql('postgres', "EXPLAIN (VERBOSE, COSTS OFF) $per_shard") =~ /Remote SQL: (.*)$/mg;
like($limited[1], qr/ORDER BY \(v OPERATOR\(public\.<->\) '\[[^']*\]'\) ASC NULLS LAST LIMIT 10::bigint$/,
	'per-partition subqueries ship their LIMIT');
is($coord->safe_psql('postgres', $per_shard), $coord->safe_psql('postgres', $topk),
	'and find the same rows');

# --- results: recall@10 of 50 queries against the exact top 10

# index statistics of a shard, "scans seq_scans"
sub scan_counts_sql
{
	return q{SELECT i.idx_scan || ' ' || t.seq_scan FROM pg_stat_user_indexes i
		JOIN pg_stat_user_tables t USING (relid) WHERE i.indexrelname = 'items_s_v_idx'};
}
sub scan_counts { return $_[0]->safe_psql('postgres', scan_counts_sql); }
# The statistics of a postgres_fdw session arrive when it ends, after the
# coordinator's session: wait for the two per-partition queries' scans.
for my $shard (@shards)
{
	$shard->poll_query_until('postgres',
		q{SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'items_s_v_idx'}, '2')
	  or die 'the shard\'s index statistics did not arrive';
}
my @before = map { [ split / /, scan_counts($_) ] } @shards;

my $recall_sql = q{
	SELECT round(avg((SELECT count(*) FROM
		(SELECT id FROM items ORDER BY v <-> q.v LIMIT 10) s
		WHERE s.id IN (SELECT id FROM ref ORDER BY v <-> q.v LIMIT 10)) / 10.0), 4)
	FROM queries q};
my $recall = $coord->safe_psql('postgres', $recall_sql);
cmp_ok($recall, '>=', 0.95, "recall\@10 over the shards against the exact top 10 ($recall)");
is($coord->safe_psql('postgres', "SELECT count(*) FROM ($topk) s"), '10', 'a query gets its k rows');

# every query ran one index scan on each shard (the stats arrive when the
# postgres_fdw sessions end), and no sequential scan
for my $i (0, 1)
{
	my ($scans, $seq) = @{ $before[$i] };
	my $want = ($scans + 51) . " $seq";
	ok($shards[$i]->poll_query_until('postgres', scan_counts_sql, $want),
		"shard @{[ $i + 1 ]}: one index scan per query, no seq scan ($want)");
}

# --- inserts through the coordinator go to their shard's table and index

$coord->safe_psql('postgres', qq{INSERT INTO items VALUES ($rows + 1, '$q')});
my $home = $coord->safe_psql('postgres',
	"SELECT satisfies_hash_partition('items'::regclass, 2, 0, $rows + 1)") eq 't' ? 0 : 1;
is($shards[$home]->safe_psql('postgres', qq{
		SET enable_seqscan = off;
		SELECT id FROM items_s ORDER BY v <-> '$q' LIMIT 1}),
	$rows + 1, 'the inserted row is on its hash partition\'s shard, found by that shard\'s index');
is($shards[ 1 - $home ]->safe_psql('postgres', "SELECT count(*) FROM items_s WHERE id = $rows + 1"),
	'0', 'and not on the other shard');
is($coord->safe_psql('postgres', "SELECT id FROM items ORDER BY v <-> '$q' LIMIT 1"), $rows + 1,
	'the coordinator finds it first');

# --- shard_topk (test/shard_topk.sql): the shards searched concurrently via dblink

$coord->safe_psql('postgres',
	'CREATE EXTENSION dblink;' . slurp_file("$FindBin::RealBin/../shard_topk.sql"));
my $topk_dblink = "SELECT id FROM shard_topk('{shard1,shard2}', '$q', 10)";
is($coord->safe_psql('postgres', $topk_dblink), $coord->safe_psql('postgres', $topk),
	'shard_topk finds the rows the merged scans find');
my $recall_dblink = $coord->safe_psql('postgres', q{
	SELECT round(avg((SELECT count(*) FROM shard_topk('{shard1,shard2}', q.v, 10) s
		WHERE s.id IN (SELECT id FROM ref ORDER BY v <-> q.v LIMIT 10)) / 10.0), 4)
	FROM queries q});
cmp_ok($recall_dblink, '>=', 0.95, "shard_topk recall\@10 against the exact top 10 ($recall_dblink)");

# --- gnnvec.ef_search on the shards

# A scan without iterative search returns at most ef_search rows
# (docs/gnnhnsw.md), so the shards' setting shows in how many rows LIMIT 10
# gets: min(10, the sum over the shards).  settings_N reads the setting of
# the postgres_fdw session this coordinator session holds on shard N.
my $count_sql = "SELECT count(*) FROM ($topk) s";
my $shard_efs = 'SELECT s1.ef_search || \' \' || s2.ef_search FROM settings_1 s1, settings_2 s2';
is($coord->safe_psql('postgres', "SET gnnvec.ef_search = 3; $count_sql; $shard_efs"), "10\n40 40",
	"the coordinator's SET gnnvec.ef_search does not reach the shards");

$coord->safe_psql('postgres', q{
	ALTER SERVER shard1 OPTIONS (ADD options '-c gnnvec.ef_search=3');
	ALTER SERVER shard2 OPTIONS (ADD options '-c gnnvec.ef_search=3');
});
is($coord->safe_psql('postgres', "$count_sql; $shard_efs"), "6\n3 3",
	"the server's options set it in the shard sessions: 3 rows from each");
is($coord->safe_psql('postgres', "SELECT count(*) FROM ($topk_dblink) s"), '6',
	'and in shard_topk\'s dblink sessions');

$coord->safe_psql('postgres', q{
	ALTER SERVER shard1 OPTIONS (DROP options);
	ALTER SERVER shard2 OPTIONS (DROP options);
});
$_->safe_psql('postgres', 'ALTER ROLE CURRENT_USER SET gnnvec.ef_search = 4') for @shards;
is($coord->safe_psql('postgres', "$count_sql; $shard_efs"), "8\n4 4",
	'ALTER ROLE ... SET on the shards sets it for new postgres_fdw sessions');
$_->safe_psql('postgres', 'ALTER ROLE CURRENT_USER RESET gnnvec.ef_search') for @shards;
is($coord->safe_psql('postgres', $count_sql), '10', 'back to 10 rows at the default');

# --- a shard that is down: an error, never the other shard's rows alone

# a session whose dblink connections are open when the shard goes
my $session = GnnvecSession->new($coord);
is($session->query("SELECT count(*) FROM ($topk_dblink) s"), '10', 'shard_topk in a long session');

$shards[1]->stop;
my ($out, $err);
my $rc = $coord->psql('postgres', $topk, stdout => \$out, stderr => \$err);
isnt($rc, 0, 'a top-k query fails while shard 2 is down');
is($out, '', 'and returns no rows');
like($err, qr/ERROR:  could not connect to server "shard2"/, 'the error names the shard');

# rows that partition pruning keeps on shard 1 are still served
my ($id1, $id2) = split /\|/, $coord->safe_psql('postgres', qq{
	SELECT min(id) FILTER (WHERE satisfies_hash_partition('items'::regclass, 2, 0, id)),
		   min(id) FILTER (WHERE satisfies_hash_partition('items'::regclass, 2, 1, id))
	FROM generate_series($rows + 2, $rows + 100) id});
my $on_shard1 = $coord->safe_psql('postgres',
	"SELECT min(id) FROM ref WHERE satisfies_hash_partition('items'::regclass, 2, 0, id)");
is($coord->safe_psql('postgres', "SELECT count(*) FROM items WHERE id = $on_shard1"), '1',
	'a query pruned to shard 1 still runs');
$rc = $coord->psql('postgres', qq{
	BEGIN;
	INSERT INTO items VALUES ($id1, '$q');
	INSERT INTO items VALUES ($id2, '$q');
	COMMIT;}, stdout => \$out, stderr => \$err);
isnt($rc, 0, 'a transaction writing to both shards fails');
like($err, qr/could not connect to server "shard2"/, 'naming the shard that is down');
is($shards[0]->safe_psql('postgres', "SELECT count(*) FROM items_s WHERE id = $id1"), '0',
	'and leaves nothing on shard 1');

$session->{err} = '';
is($session->query("SELECT count(*) FROM ($topk_dblink) s"), '', 'shard_topk returns nothing while shard 2 is down');
like($session->{err}, qr/ERROR:  (?s:.*)dblink connection named "shard2"/, 'but an error naming the shard\'s connection');
$session->{err} = '';
is($session->query("SELECT count(*) FROM ($topk_dblink) s"), '', 'and again');
like($session->{err}, qr/ERROR:  could not establish connection/, 'now failing to connect');

$shards[1]->start;
is($session->query("SELECT count(*) FROM ($topk_dblink) s"), '10',
	'the same session\'s shard_topk reconnects once shard 2 is back');
$session->quit;
is($coord->safe_psql('postgres', $count_sql), '10', 'with shard 2 back, queries answer again');
cmp_ok($coord->safe_psql('postgres', $recall_sql), '>=', 0.95, 'with the same recall');

# --- a model trained on one server serves another's index

# gnnvec_models is keyed by the index OID, which differs between clusters:
# the row is copied with index_oid (and index_name) set to the target index.
$shards[0]->safe_psql('postgres', q{
	CREATE TABLE pairs AS SELECT a.v AS q, b.v AS p FROM items_s a
		JOIN LATERAL (SELECT v FROM items_s b WHERE b.id <> a.id ORDER BY b.v <-> a.v LIMIT 1) b ON true
		WHERE a.id <= 300;
	SELECT count(*) FROM gnnvec_train('items_s_v_idx', 'SELECT q, p FROM pairs', epochs => 1, hidden => 8,
		validation_fraction => 0);
});
my $model_file = $shards[0]->basedir . '/model.copy';
$shards[0]->safe_psql('postgres', qq{
	COPY (SELECT scope, kind, version, config, model, state FROM gnnvec_models
		  WHERE index_oid = 'items_s_v_idx'::regclass) TO '$model_file' (FORMAT binary)});
my $scores = qq{SELECT count(score) FROM gnnvec_search('items_s_v_idx', '$q', 10)};
is($shards[1]->safe_psql('postgres', $scores), '0', 'shard 2 has no model: no scores');
$shards[1]->safe_psql('postgres', qq{
	CREATE TEMP TABLE model_in (scope text, kind text, version bigint, config text, model bytea, state bytea);
	COPY model_in FROM '$model_file' (FORMAT binary);
	INSERT INTO gnnvec_models (index_oid, index_name, scope, kind, version, config, model, state)
		SELECT 'items_s_v_idx'::regclass, 'public.items_s_v_idx', scope, kind, version, config, model, state
		FROM model_in;
});
is($shards[1]->safe_psql('postgres', q{SELECT scope || ' ' || kind || ' ' || version FROM gnnvec_model_info('items_s_v_idx')}),
	'Rerank gnn 1', 'the copied row is shard 2\'s index\'s model');
is($shards[1]->safe_psql('postgres', $scores), '10', 'and scores shard 2\'s search');

$_->stop for (@shards, $coord);
done_testing();
