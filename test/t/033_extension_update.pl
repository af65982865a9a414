# CREATE EXTENSION gives 0.1.3 (0.1.0 and the update scripts), and a 0.1.0
# installation updates to it: the MicroLoRA mutators are closed to PUBLIC
# either way, while the rest stays open, and gnnvec_scan_cache has the
# shared column of 0.1.3.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('ext_update');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE ROLE ext_user; CREATE DATABASE old');

# what ext_user may execute: the mutators, then two functions that stay open
my $privileges = q{SELECT string_agg(has_function_privilege('ext_user', f, 'EXECUTE')::text, ' ' ORDER BY n)
	FROM unnest(ARRAY['gnnvec_lora_adapt(text, vector)', 'gnnvec_lora_adapt(integer, vector)',
		'gnnvec_lora_reward(text, double precision)', 'gnnvec_lora_reward(integer, double precision)',
		'gnnvec_lora_reset(text)', 'gnnvec_lora_reset(integer)', 'gnnvec_lora_reset_all()',
		'gnnvec_lora_category_fallback(boolean)',
		'gnnvec_lora_forward(text, vector)', 'gnnvec_search(regclass, vector, integer, boolean)'])
		WITH ORDINALITY AS t(f, n)};
my $closed = 'false false false false false false false false true true';

$node->safe_psql('postgres', 'CREATE EXTENSION gnnvec');
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'gnnvec'}),
	'0.1.3', 'CREATE EXTENSION installs 0.1.3');
is($node->safe_psql('postgres', $privileges), $closed, 'mutators closed to PUBLIC in a new installation');

$node->safe_psql('old', q{CREATE EXTENSION gnnvec VERSION '0.1.0'});
is($node->safe_psql('old', $privileges), 'true true true true true true true true true true',
	'0.1.0 left them open');
$node->safe_psql('old', 'ALTER EXTENSION gnnvec UPDATE');
is($node->safe_psql('old', q{SELECT extversion FROM pg_extension WHERE extname = 'gnnvec'}),
	'0.1.3', 'ALTER EXTENSION UPDATE reaches 0.1.3');
is($node->safe_psql('old', $privileges), $closed, 'the update closes them');
is($node->safe_psql('old', q{SELECT string_agg(a, ' ' ORDER BY n) FROM unnest(
		(SELECT proargnames FROM pg_proc WHERE proname = 'gnnvec_scan_cache')) WITH ORDINALITY AS t(a, n)}),
	'index generation elements bytes codes shared', 'gnnvec_scan_cache has the 0.1.3 columns');

$node->stop;
done_testing();
