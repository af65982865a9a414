# With shared_preload_libraries = 'gnnvec', MicroLoRA adapters live in shared
# memory: what one backend learns, another uses; concurrent adaptations are
# not lost; each session adapts at its own last input; the mutators are
# closed to PUBLIC; errors under the lock leave it usable;
# gnnvec.lora_max_dim bounds the dimension with a clear error.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use GnnvecSession;

my $node = PostgreSQL::Test::Cluster->new('lora_shared');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'gnnvec'
gnnvec.lora_max_dim = 64
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION gnnvec');

# Each safe_psql call is a new backend.
my ($out, $err);
$node->psql('postgres', q{SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]')},
	stdout => \$out, stderr => \$err);
is($out, '[0.5,-1,2]', 'untrained shared adapter is the identity');
unlike($err, qr/private to this session/, 'no per-backend NOTICE when preloaded');

my $learned = $node->safe_psql('postgres', q{
	SELECT gnnvec_lora_category_fallback(false);
	SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]');
	SELECT gnnvec_lora_adapt('HnswScan', '[1,0,-1]');
	SELECT gnnvec_lora_adapt('HnswScan', '[1,0,-1]');
	SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]');
});
$learned = (split /\n/, $learned)[-1];
isnt($learned, '[0.5,-1,2]', 'adapting changed the adapter in backend 1');

is($node->safe_psql('postgres', q{SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]')}),
	$learned, 'backend 2 sees the adapter backend 1 trained');
is($node->safe_psql('postgres',
		q{SELECT dim || ' ' || forward_count || ' ' || adapt_count || ' ' || (delta_norm > 0)
		  FROM gnnvec_lora_stats() WHERE name = 'HnswScan'}),
	'3 4 2 true', 'backend 2 sees backend 1\'s counts');

# the fallback switch is shared too: backend 1 turned it off
is($node->safe_psql('postgres', q{SELECT weight FROM gnnvec_lora_stats() WHERE name = 'SeqScan'}),
	'1', 'category fallback switch is shared');
$node->safe_psql('postgres', 'SELECT gnnvec_lora_category_fallback(true)');

# Two sessions give the Materialize scope different inputs, then the first
# rewards: the step is taken at its own input [1,0], not at [0,1], which
# the other session gave last.  A reward moves the output along the input
# it was taken at, so only the first coordinate of a forward of [1,1] moves.
my $first = GnnvecSession->new($node);
my $second = GnnvecSession->new($node);
$first->query(q{SET gnnvec.lora_alpha = 1; SET gnnvec.lora_learning_rate = 1});
$first->query(q{SELECT gnnvec_lora_forward('Materialize', '[1,0]')});
$second->query(q{SELECT gnnvec_lora_forward('Materialize', '[0,1]')});
$first->query(q{SELECT gnnvec_lora_reward('Materialize', 1)});
my ($x, $y) = $first->query(q{SELECT gnnvec_lora_forward('Materialize', '[1,1]')}) =~ /^\[([^,]+),([^\]]+)\]$/;
ok(defined $x && $x != 1, "the reward moved the output along the rewarding session's input ($x)");
is($y, '1', 'not along the input the other session gave last');
$second->quit;
$first->quit;

# a session that never gave the scope an input has none to adapt at,
# whatever other sessions gave it
$node->psql('postgres', q{SELECT gnnvec_lora_adapt('Materialize', '[1,1]')}, stderr => \$err);
like($err, qr/scope Materialize has no input to adapt at/, 'a new session has no last input');

# the mutators are closed to PUBLIC: they change what every backend uses
$node->safe_psql('postgres', 'CREATE ROLE lora_user LOGIN');
for my $call (q{gnnvec_lora_adapt('Materialize', '[1,1]')}, q{gnnvec_lora_adapt(15, '[1,1]')},
	q{gnnvec_lora_reward('Materialize', 1)}, q{gnnvec_lora_reset('Materialize')},
	q{gnnvec_lora_reset_all()}, q{gnnvec_lora_category_fallback(false)})
{
	$node->psql('postgres', "SELECT $call", stderr => \$err,
		extra_params => [ '-U', 'lora_user' ]);
	like($err, qr/permission denied for function gnnvec_lora_/, "$call: permission denied");
}
is($node->safe_psql('postgres', q{SELECT gnnvec_lora_forward('Materialize', '[1,1]') IS NOT NULL},
		extra_params => [ '-U', 'lora_user' ]), 't', 'forward stays open');
$node->safe_psql('postgres', q{GRANT EXECUTE ON FUNCTION gnnvec_lora_reset(text) TO lora_user});
$node->psql('postgres', q{SELECT gnnvec_lora_reset('Materialize')}, stderr => \$err,
	extra_params => [ '-U', 'lora_user' ]);
is($err, '', 'a granted role may reset');

# Four clients adapting one adapter at once: no update is lost.
my $script = $node->basedir . '/adapt.sql';
open my $fh, '>', $script or die "cannot write $script: $!";
print $fh "SELECT gnnvec_lora_forward('Sort', '[1,2,3]');\n";
print $fh "SELECT gnnvec_lora_adapt('Sort', '[0.001,0,-0.001]');\n";
close $fh;
$node->command_ok([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '50', '-f', $script, 'postgres' ],
	'pgbench: 4 clients adapting the Sort adapter');
is($node->safe_psql('postgres',
		q{SELECT forward_count || ' ' || adapt_count FROM gnnvec_lora_stats() WHERE name = 'Sort'}),
	'200 200', 'every concurrent forward and adaptation counted');
is($node->safe_psql('postgres',
		q{SELECT adapt_count FROM gnnvec_lora_stats() WHERE name = 'Order'}),
	'200', 'the category adapter learned from all of them');

# An ERROR while the lock is held releases it.
$node->psql('postgres', q{SELECT gnnvec_lora_forward('HnswScan', '[1,2]')}, stderr => \$err);
like($err, qr/vector has 2 dimensions, but the HnswScan adapter has 3/, 'dimension mismatch in shared mode');
is($node->safe_psql('postgres', q{SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]') IS NOT NULL}),
	't', 'the lock was released by the error');

# gnnvec.lora_max_dim sizes shared memory: a wider vector is a clear error
$node->psql('postgres', q{SELECT gnnvec_lora_forward('Rerank', array_fill(1, ARRAY[65])::vector)},
	stderr => \$err);
like($err, qr/vector has 65 dimensions, more than the 64 of shared MicroLoRA adapters/,
	'dimension above gnnvec.lora_max_dim');
like($err, qr/HINT:  Raise gnnvec.lora_max_dim/, 'with a hint');
is($node->safe_psql('postgres',
		q{SELECT gnnvec_lora_forward('Rerank', array_fill(1, ARRAY[64])::vector) = array_fill(1, ARRAY[64])::vector}),
	't', 'gnnvec.lora_max_dim itself fits');

$node->psql('postgres', 'SET gnnvec.lora_max_dim = 128', stderr => \$err);
like($err, qr/cannot be changed without restarting the server/, 'lora_max_dim is fixed at start');

# reset_all from one backend clears what every backend sees
$node->safe_psql('postgres', 'SELECT gnnvec_lora_reset_all()');
is($node->safe_psql('postgres', q{SELECT count(*) FROM gnnvec_lora_stats() WHERE dim IS NOT NULL}),
	'0', 'reset_all is shared');

$node->stop;
done_testing();
