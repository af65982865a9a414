# gnnhnsw crash safety: the postmaster is killed (SIGKILL) while several
# sessions insert into an indexed table, one row per transaction.  After
# recovery every committed row is found through the index and
# gnnvec_index_check reports nothing.  The same crash runs against an index
# built by HNSW insertion and one built with build_method = 'cagra'; the
# damaged-page checks then run on the first.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

# Crash one cluster while sessions insert into an index built by $build;
# recover and check it.  Returns the running node.
sub crash_and_recover
{
	my ($build) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;

	my $node = PostgreSQL::Test::Cluster->new("crash_$build");
	$node->init;
	$node->append_conf('postgresql.conf', "fsync = on\nrestart_after_crash = off\n");
	$node->start;

	$node->safe_psql('postgres', qq{
		CREATE EXTENSION gnnvec;
		CREATE TABLE items (id bigserial PRIMARY KEY, v vector(16));
		INSERT INTO items (v)
			SELECT (SELECT array_agg(random()::real) FROM generate_series(1, 16) WHERE i > 0)::vector
			FROM generate_series(1, 2000) i;
		CREATE INDEX items_v ON items USING gnnhnsw (v) WITH (build_method = '$build');
		CREATE PROCEDURE ins(n int) LANGUAGE plpgsql AS \$\$
		BEGIN
			FOR i IN 1 .. n LOOP
				INSERT INTO items (v)
					SELECT (SELECT array_agg(random()::real) FROM generate_series(1, 16) WHERE i > 0)::vector;
				COMMIT;
			END LOOP;
		END \$\$;
	});

	# four inserting sessions, one row per statement (autocommit), killed
	# mid-flight with the postmaster; their backends notice the postmaster's
	# death at the next statement and exit
	my $script = $node->basedir . '/ins.sql';
	open(my $fh, '>', $script) or die;
	print $fh "INSERT INTO items (v) SELECT (SELECT array_agg(random()::real) FROM generate_series(1, 16) g WHERE i > 0)::vector FROM generate_series(1, 1) i;\n"
	  for 1 .. 5000;
	close($fh);
	my @clients;
	for my $c (1 .. 4)
	{
		my ($out, $err) = ('', '');
		push @clients,
		  IPC::Run::start([ 'psql', '-X', '-q', '-d', $node->connstr('postgres'), '-f', $script ],
			'>', \$out, '2>', \$err);
	}
	my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM items');
	my $waited = 0;
	while ($waited < 600)
	{
		select(undef, undef, undef, 0.1);
		$waited++;
		last if $node->safe_psql('postgres', 'SELECT count(*) FROM items') > $before + 1000;
	}
	ok($node->safe_psql('postgres', 'SELECT count(*) FROM items') > $before + 100,
		"$build: sessions were inserting when the postmaster was killed");
	$node->kill9;
	$_->kill_kill for @clients;

	# the backends exit once they see the postmaster gone; then restart
	my $started = 0;
	for my $try (1 .. 30)
	{
		sleep 1;
		$started = $node->start(fail_ok => 1);
		last if $started;
		# a failed start leaves the stale postmaster.pid's PID recorded
		$node->{_pid} = undef;
	}
	ok($started, "$build: restarted after the kill");

	my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM items');
	ok($rows > $before, "$build: recovered $rows rows");

	# every row (unique random vectors) finds itself as its nearest neighbour
	my $missing = $node->safe_psql('postgres', q{
		SET enable_seqscan = off;
		SET gnnvec.ef_search = 400;
		SELECT count(*) FROM (SELECT id, v FROM items) t,
			LATERAL (SELECT i2.id AS found FROM items i2 ORDER BY i2.v <-> t.v LIMIT 1) s
		WHERE found <> t.id;
	});
	is($missing, '0', "$build: every committed row is found through the index");

	my $plan = $node->safe_psql('postgres', q{
		SET enable_seqscan = off;
		EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY v <-> (SELECT v FROM items LIMIT 1) LIMIT 1;
	});
	like($plan, qr/Index Scan using items_v/, "$build: the lookups used the index");

	is($node->safe_psql('postgres', q{SELECT count(*) FROM gnnvec_index_check('items_v')}),
		'0', "$build: gnnvec_index_check reports nothing after recovery");
	# rows of inserts the crash cut short are dead; VACUUM takes them away
	$node->safe_psql('postgres', 'VACUUM items');
	is($node->safe_psql('postgres', q{SELECT heap_tids FROM gnnvec_index_info('items_v')}),
		$rows, "$build: after VACUUM the index holds one heap TID per row");

	# the index keeps working after recovery
	$node->safe_psql('postgres', 'CALL ins(200)');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM gnnvec_index_check('items_v')}),
		'0', "$build: inserts after recovery keep the index sound");
	return ($node, $rows);
}

my ($cagra_node) = crash_and_recover('cagra');
$cagra_node->stop;
my ($node, $rows) = crash_and_recover('hnsw');

# damage the index on disk: the check names it, scans fail cleanly
my $relpath = $node->safe_psql('postgres', q{SELECT pg_relation_filepath('items_v')});
$node->stop;
sub poke
{
	my ($offset, $bytes) = @_;
	my $file = $node->data_dir . '/' . $relpath;
	open(my $fh, '+<', $file) or die "open $file: $!";
	binmode $fh;
	seek($fh, $offset, 0) or die;
	print $fh $bytes;
	close($fh);
}
# block 1's special space (page_id), then the metapage's magic
poke(2 * 8192 - 8, "\xde\xad\xbe\xef\xde\xad\xbe\xef");
$node->start;
like($node->safe_psql('postgres', q{SELECT string_agg(problem, '; ') FROM gnnvec_index_check('items_v')}),
	qr/page is not a gnnhnsw page/, 'gnnvec_index_check reports a damaged page');
$node->stop;
poke(24, "\0\0\0\0");
$node->start;
like($node->safe_psql('postgres', q{SELECT string_agg(problem, '; ') FROM gnnvec_index_check('items_v')}),
	qr/metapage magic/, 'gnnvec_index_check reports a damaged metapage');
my ($ret, $out, $err) = $node->psql('postgres', q{
	SET enable_seqscan = off;
	SELECT id FROM items ORDER BY v <-> (SELECT v FROM items LIMIT 1) LIMIT 1;
});
like($err, qr/metapage is damaged/, 'a scan of the damaged index fails with a clear error');
like($node->safe_psql('postgres', 'SELECT 1'), qr/^1$/, 'the server is still up');

done_testing();
