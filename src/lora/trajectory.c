/*
 * trajectory.c
 *		A fixed-size ring of executed-operator records ("trajectories"),
 *		with a running per-operator baseline and summary statistics.
 *		No PostgreSQL includes; never allocates.
 *
 * Improvement is the share of the baseline time a node saved:
 * (baseline - exec) / baseline, so 0.5 means twice as fast as usual for its
 * operator type, 0 means usual, and -1 twice as slow.  (The seed uses
 * baseline/exec - 1, which is unbounded above for fast nodes.)
 */
#include <math.h>
#include <string.h>

#include "lora/lora.h"

size_t
lora_ring_size(int capacity, int max_dim)
{
	return sizeof(LoraTrajectory) * (size_t) capacity +
		sizeof(float) * (size_t) capacity * max_dim;
}

void
lora_ring_init(LoraRing *ring, void *storage, int capacity, int max_dim)
{
	memset(ring, 0, sizeof(*ring));
	ring->capacity = capacity;
	ring->max_dim = max_dim;
	ring->slots = (LoraTrajectory *) storage;
	ring->embeddings = (float *) (ring->slots + capacity);
}

void
lora_ring_reset(LoraRing *ring)
{
	ring->total = 0;
	ring->embeddings_dropped = 0;
	memset(ring->op_ms_sum, 0, sizeof(ring->op_ms_sum));
	memset(ring->op_count, 0, sizeof(ring->op_count));
}

void
lora_ring_record(LoraRing *ring, int op, double exec_ms, double rows,
				 double loops, const float *embedding, int emb_dim,
				 int64_t recorded_at)
{
	int			slot = (int) (ring->total % ring->capacity);
	LoraTrajectory *t = &ring->slots[slot];
	double		baseline = ring->op_count[op] > 0 ?
		ring->op_ms_sum[op] / ring->op_count[op] : exec_ms;

	ring->total++;
	t->id = ring->total;
	t->op = op;
	t->exec_ms = exec_ms;
	t->baseline_ms = baseline;
	t->improvement = baseline > 0.0 ? (baseline - exec_ms) / baseline : 0.0;
	t->rows = rows;
	t->loops = loops;
	t->recorded_at = recorded_at;
	t->emb_dim = 0;
	if (embedding != NULL && emb_dim > ring->max_dim)
		ring->embeddings_dropped++;
	else if (embedding != NULL)
	{
		memcpy(ring->embeddings + (size_t) slot * ring->max_dim, embedding,
			   sizeof(float) * emb_dim);
		t->emb_dim = emb_dim;
	}
	ring->op_ms_sum[op] += exec_ms;
	ring->op_count[op]++;
}

int
lora_ring_count(const LoraRing *ring)
{
	return ring->total < (uint64_t) ring->capacity ?
		(int) ring->total : ring->capacity;
}

/* Slot of the i-th oldest record held. */
static int
ring_slot(const LoraRing *ring, int i)
{
	uint64_t	first = ring->total - lora_ring_count(ring);

	return (int) ((first + i) % ring->capacity);
}

const LoraTrajectory *
lora_ring_get(const LoraRing *ring, int i)
{
	return &ring->slots[ring_slot(ring, i)];
}

const float *
lora_ring_embedding(const LoraRing *ring, int i)
{
	return ring->embeddings + (size_t) ring_slot(ring, i) * ring->max_dim;
}

void
lora_ring_stats(const LoraRing *ring, double threshold,
				LoraTrajectoryStats *stats)
{
	int			n = lora_ring_count(ring);
	double		sum = 0.0;
	double		sumsq_dev = 0.0;
	int			successes = 0;

	memset(stats, 0, sizeof(*stats));
	stats->total = ring->total;
	stats->buffered = n;
	stats->embeddings_dropped = ring->embeddings_dropped;
	stats->best_improvement = n > 0 ? -INFINITY : 0.0;
	for (int i = 0; i < n; i++)
	{
		const LoraTrajectory *t = lora_ring_get(ring, i);

		sum += t->improvement;
		stats->best_improvement = fmax(stats->best_improvement, t->improvement);
		successes += t->improvement > 0.0;
		stats->high_quality += t->improvement > threshold;
		stats->by_op[t->op]++;
	}
	if (n == 0)
		return;
	stats->mean_improvement = sum / n;
	stats->success_rate = (double) successes / n;
	/* second pass: numerically safer than E[x^2] - E[x]^2 */
	for (int i = 0; i < n; i++)
	{
		double		dev = lora_ring_get(ring, i)->improvement - stats->mean_improvement;

		sumsq_dev += dev * dev;
	}
	stats->variance = sumsq_dev / n;
}
