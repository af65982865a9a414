# A long-lived psql session for TAP tests that need a backend to keep its
# state (caches, an open transaction) across statements:
#
#   my $s = GnnvecSession->new($node);
#   my $out = $s->query('SELECT 1');      # waits for the answer
#   $s->send("BEGIN;\n...");  $s->wait_for(qr/TRAINED/);
#   $s->quit;
package GnnvecSession;

use strict;
use warnings;
use IPC::Run;

sub new
{
	my ($class, $node, $dbname) = @_;
	my $self = bless { in => '', out => '', err => '' }, $class;

	$self->{h} = IPC::Run::start(
		[ 'psql', '-X', '-A', '-t', '-d', $node->connstr($dbname // 'postgres') ],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err},
		IPC::Run::timeout(120));
	return $self;
}

# Run one statement (or several, ;-separated) and return what it printed,
# without command tags such as SET.
sub query
{
	my ($self, $sql) = @_;

	$self->{out} = '';
	$self->send("$sql;\n\\echo END-OF-QUERY\n");
	$self->wait_for(qr/END-OF-QUERY\n/);
	(my $out = $self->{out}) =~ s/END-OF-QUERY\n//;
	$out =~ s/^SET\n//mg;
	chomp $out;
	return $out;
}

# Queue input without waiting; wait_for then pumps until the output matches.
sub send
{
	my ($self, $text) = @_;
	$self->{in} .= $text;
}

sub wait_for
{
	my ($self, $pattern) = @_;
	$self->{h}->pump until $self->{out} =~ $pattern;
}

sub quit
{
	my ($self) = @_;
	$self->send("\\q\n");
	$self->{h}->finish;
}

1;
