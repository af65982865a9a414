# Model writers of one index and scope take turns: while one transaction
# holds its gnnvec_feedback or gnnvec_train, the next waits on the model's
# lock, then starts from the version the first committed (versions N+1 and
# N+2, and what the first learned is kept); under REPEATABLE READ, where
# the waiter's snapshot cannot see that version, it gets a serialization
# failure.  Each save adds its pairs to the stored replay buffer, so the
# length of the state column tells whether a save started from the
# previous one's state.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecSession;

my $node = PostgreSQL::Test::Cluster->new('gnn_concurrent');
$node->init;
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION gnnvec;
	CREATE TABLE items (id int PRIMARY KEY, v vector(8));
	INSERT INTO items SELECT i, (SELECT array_agg(sin(i * j * 0.37 + j)::real) FROM generate_series(1, 8) j)::vector
		FROM generate_series(1, 200) i;
	CREATE INDEX items_v ON items USING gnnhnsw (v vector_l2_ops) WITH (m = 8);
	CREATE TABLE pairs AS SELECT a.id, a.v AS q, b.v AS p FROM items a JOIN items b ON b.id = a.id + 100
		WHERE a.id <= 20;
});

sub feedback_sql
{
	my ($id) = @_;
	# log the event, then train on it (the subquery runs first)
	return "SELECT (gnnvec_feedback_train('items_v')).version FROM (SELECT gnnvec_feedback('items_v', "
	  . "(SELECT q FROM pairs WHERE id = $id), (SELECT p FROM pairs WHERE id = $id)) OFFSET 0) logged";
}

my $train_sql = q{SELECT count(*) FROM gnnvec_train('items_v', 'SELECT q, p FROM pairs', scope => 'Rerank',
	epochs => 1, hidden => 8, validation_fraction => 0)};

sub state_length
{
	my ($scope) = @_;
	return $node->safe_psql('postgres',
		"SELECT octet_length(state) FROM gnnvec_models WHERE scope = '$scope'");
}

# Start a statement in a session without waiting for it.
sub start_query
{
	my ($s, $sql) = @_;
	$s->{out} = '';
	$s->{err} = '';
	$s->send("$sql;\n\\echo END-OF-QUERY\n");
	$s->{h}->pump_nb while length $s->{in};    # hand it to psql now
}

sub finish_query
{
	my ($s) = @_;
	$s->wait_for(qr/END-OF-QUERY\n/);
	(my $out = $s->{out}) =~ s/END-OF-QUERY\n//;
	chomp $out;
	return $out;
}

# Is the backend waiting for the model lock of items_v?
sub waits_for_model_lock
{
	my ($pid) = @_;
	return $node->poll_query_until('postgres', qq{
		SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $pid AND NOT granted
			AND locktype = 'object' AND classid = 'gnnvec_models'::regclass
			AND objid = 'items_v'::regclass)});
}

my $first = GnnvecSession->new($node);
my $second = GnnvecSession->new($node);
my $second_pid = $second->query('SELECT pg_backend_pid()');

# ---- gnnvec_feedback_train, READ COMMITTED -----------------------------------------
$node->safe_psql('postgres', feedback_sql(1));
my $len1 = state_length('Rerank');

$first->query('BEGIN');
is($first->query(feedback_sql(2)), '2', 'the first writer saves version 2, uncommitted');
my $len2 = $first->query(q{SELECT octet_length(state) FROM gnnvec_models WHERE scope = 'Rerank'});
ok($len2 > $len1, 'a feedback call adds to the stored state');

start_query($second, feedback_sql(3));
ok(waits_for_model_lock($second_pid), 'the second writer waits for the model lock');
$first->query('COMMIT');
is(finish_query($second), '3', 'then saves version 3, not a second version 2');
is($second->{err}, '', 'without an error');
is(state_length('Rerank'), $len2 + ($len2 - $len1),
	'version 3 started from version 2: both pairs are in its state');

# ---- gnnvec_train (the same model: feedback left version 3) ---------------
$node->safe_psql('postgres', $train_sql);
$first->query('BEGIN');
$first->query($train_sql);
my $train2 = $first->query(q{SELECT version || ' ' || octet_length(state) FROM gnnvec_models WHERE scope = 'Rerank'});
my ($v2, $tlen2) = split / /, $train2;
is($v2, '5', 'the first trainer saves version 5, uncommitted');
start_query($second, $train_sql);
ok(waits_for_model_lock($second_pid), 'the second trainer waits for the model lock');
$first->query('COMMIT');
finish_query($second);
unlike($second->{err}, qr/ERROR/, 'the second trainer succeeds');
my ($v3, $tlen3) = split / /, $node->safe_psql('postgres',
	q{SELECT version || ' ' || octet_length(state) FROM gnnvec_models WHERE scope = 'Rerank'});
is($v3, '6', 'and saves version 6');
ok($tlen3 > $tlen2, "version 6 started from version 5's state ($tlen3 > $tlen2 bytes)");

# ---- REPEATABLE READ: the waiter cannot see the new version ------------------
$second->send("\\set VERBOSITY verbose\n");
$second->query('BEGIN ISOLATION LEVEL REPEATABLE READ');
$second->query('SELECT count(*) FROM items');    # takes the snapshot
$first->query('BEGIN');
is($first->query(feedback_sql(4)), '7', 'the first writer saves version 7, uncommitted');
start_query($second, feedback_sql(5));
ok(waits_for_model_lock($second_pid), 'a REPEATABLE READ writer waits too');
$first->query('COMMIT');
finish_query($second);
like($second->{err}, qr/ERROR:  40001: could not serialize access to the Rerank model of index "items_v" due to a concurrent update/,
	'then fails to serialize');
like($second->{err}, qr/HINT:  Retry the transaction/, 'with a hint to retry');
$second->query('ROLLBACK');
is($second->query(feedback_sql(5)), '8', 'the retry saves version 8');

$first->quit;
$second->quit;
$node->stop;
done_testing();
