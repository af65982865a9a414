/*
 * test_cagra_gpu_plan.c
 *		The GPU build's memory plan (src/cagra/cagra_gpu_plan.c): plans for
 *		1M x 128 and 10M x 768 within a budget, every buffer counted in a
 *		stage, refusals, and the CUB radix sort's scratch counted; and the
 *		host half of the GPU's partitioned kNN: rows grouped by list, and
 *		each list's candidate rows from its probes.
 */
#include <stdint.h>
#include <string.h>

#include "cagra/cagra_gpu_plan.h"
#include "unit.h"

#define MiB ((size_t) 1 << 20)
#define GiB ((size_t) 1 << 30)

static CagraGpuPlanInput
input(int64_t n, int dim, int I, int d, bool partitioned, size_t budget)
{
	CagraGpuPlanInput in;

	memset(&in, 0, sizeof(in));
	in.n = n;
	in.dim = dim;
	in.intermediate_degree = I;
	in.graph_degree = d;
	in.knn_candidates = I + (I / 4 > 8 ? I / 4 : 8);
	in.partitioned = partitioned;
	in.list_rows = 400;
	in.probes = 5;
	/* what CUB asked for n x d pairs on a test build: about 1.1 n d ints */
	in.sort_scratch_bytes = (size_t) n * d * 4 / 10 * 11 + MiB;
	in.budget = budget;
	return in;
}

/*
 * Every stage's planned total is the sum of its buffers, within the budget;
 * every buffer the plan gives bytes to is alive in some stage (else the
 * build would allocate memory the plan never counted).
 */
static void
check_plan_complete(const char *what, const CagraGpuPlanInput *in,
					const CagraGpuPlan *plan)
{
	bool		listed[CAGRA_GPU_N_BUFFERS] = {false};

	for (int s = 0; s < CAGRA_GPU_N_STAGES; s++)
	{
		CagraGpuBuffer buffers[CAGRA_GPU_N_BUFFERS];
		int			count = cagra_gpu_stage_buffers(in, (CagraGpuStage) s, buffers);
		size_t		sum = 0;

		for (int i = 0; i < count; i++)
		{
			sum += cagra_gpu_buffer_bytes(in, plan, buffers[i]);
			listed[buffers[i]] = true;
		}
		CHECK(sum == plan->stage_bytes[s], "%s: stage %d planned %zu, buffers sum to %zu",
			  what, s, plan->stage_bytes[s], sum);
		CHECK(sum <= in->budget, "%s: stage %d needs %zu bytes, budget %zu",
			  what, s, sum, in->budget);
		CHECK(sum <= plan->peak_bytes, "%s: stage %d above the peak", what, s);
	}
	for (int b = 0; b < CAGRA_GPU_N_BUFFERS; b++)
		CHECK(listed[b] || cagra_gpu_buffer_bytes(in, plan, (CagraGpuBuffer) b) == 0,
			  "%s: %s has bytes but is in no stage", what,
			  cagra_gpu_buffer_name((CagraGpuBuffer) b));
}

static void
test_one_million(void)
{
	CagraGpuPlanInput in = input(1000000, 128, 48, 32, true, 8 * GiB);
	CagraGpuPlan plan;
	char		err[256];

	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "1M x 128: %s", err);
	CHECK(plan.resident, "1M x 128 in 8 GiB: the data (488 MiB) stays resident");
	CHECK(plan.n_lists == 2500 && plan.sample_rows == 80000 && plan.probes == 5 &&
		  plan.probe_pool == 21,
		  "1M x 128: %lld lists, %lld sample rows, %d probes, pool %d",
		  (long long) plan.n_lists, (long long) plan.sample_rows, plan.probes,
		  plan.probe_pool);
	CHECK(plan.list_queries == 1024 && plan.list_candidates == 16384,
		  "1M x 128: blocks %d x %d", plan.list_queries, plan.list_candidates);
	CHECK(plan.stage_bytes[CAGRA_GPU_STAGE_EXACT_KNN] == 0,
		  "a partitioned plan runs no exact stage");
	check_plan_complete("1M x 128 partitioned", &in, &plan);

	/* the reverse stage holds six n x d arrays and the sort's scratch */
	CHECK(plan.stage_bytes[CAGRA_GPU_STAGE_REVERSE] ==
		  CAGRA_GPU_BLAS_WORKSPACE_BYTES + 6 * (size_t) 1000000 * 32 * 4 +
		  in.sort_scratch_bytes,
		  "1M x 128: reverse stage %zu", plan.stage_bytes[CAGRA_GPU_STAGE_REVERSE]);

	/* asked to stream, it streams though the data would fit */
	in.stream = true;
	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "1M x 128 streamed: %s", err);
	CHECK(!plan.resident, "1M x 128 asked to stream is not resident");
	CHECK(cagra_gpu_buffer_bytes(&in, &plan, CAGRA_GPU_DATA) == 0,
		  "a streamed plan holds no data set");
	check_plan_complete("1M x 128 streamed", &in, &plan);
	in.stream = false;

	/* the exact method's plan for the same data */
	in.partitioned = false;
	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "1M x 128 exact: %s", err);
	CHECK(plan.resident && plan.n_lists == 0, "1M x 128 exact: resident, no lists");
	CHECK(plan.stage_bytes[CAGRA_GPU_STAGE_KMEANS] == 0 &&
		  plan.stage_bytes[CAGRA_GPU_STAGE_LIST_SEARCH] == 0,
		  "an exact plan runs no list stage");
	check_plan_complete("1M x 128 exact", &in, &plan);
}

static void
test_ten_million(void)
{
	/* 10M x 768 floats are 28.6 GiB: a 24 GiB budget must stream them */
	CagraGpuPlanInput in = input(10000000, 768, 96, 64, true, 24 * GiB);
	CagraGpuPlan plan;
	char		err[256];

	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "10M x 768: %s", err);
	CHECK(!plan.resident, "10M x 768 in 24 GiB streams");
	CHECK(cagra_gpu_buffer_bytes(&in, &plan, CAGRA_GPU_DATA) == 0,
		  "a streamed plan holds no data set");
	CHECK(plan.peak_bytes <= in.budget, "10M x 768: peak %zu", plan.peak_bytes);
	CHECK(plan.n_lists == 25000 && plan.sample_rows == 800000,
		  "10M x 768: %lld lists, %lld sample rows",
		  (long long) plan.n_lists, (long long) plan.sample_rows);
	check_plan_complete("10M x 768 streamed", &in, &plan);

	/* with 64 GiB the data stays */
	in.budget = 64 * GiB;
	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "10M x 768 in 64 GiB: %s", err);
	CHECK(plan.resident, "10M x 768 in 64 GiB is resident");
	check_plan_complete("10M x 768 resident", &in, &plan);

	/* the reverse stage (six 10M x 64 arrays and the scratch) needs 17 GiB */
	in.budget = 16 * GiB;
	CHECK(!cagra_gpu_plan(&in, &plan, err, sizeof(err)), "10M x 768 in 16 GiB must be refused");
	CHECK(strstr(err, "reverse-edge merge") != NULL, "refusal names the stage: %s", err);

	/* a tight budget shrinks the blocks rather than refusing */
	in = input(1000000, 128, 48, 32, true, GiB);
	in.list_rows = 40;			/* 25000 centroids: 8192-row tiles are 781 MiB */
	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "1M x 128, 25000 lists in 1 GiB: %s", err);
	CHECK(plan.assign_rows < 8192,
		  "1M x 128, 25000 lists in 1 GiB: assignment blocks shrink to %d",
		  plan.assign_rows);
	check_plan_complete("1M x 128 tight", &in, &plan);
}

static void
test_refused(void)
{
	/* the kNN graph alone (3.6 GiB) does not fit in 2 GiB */
	CagraGpuPlanInput in = input(10000000, 768, 96, 64, true, 2 * GiB);
	CagraGpuPlan plan;
	char		err[256] = "";

	CHECK(!cagra_gpu_plan(&in, &plan, err, sizeof(err)), "10M x 768 in 2 GiB must be refused");
	CHECK(strstr(err, "too little") != NULL, "refusal message: %s", err);
	CHECK(plan.peak_bytes == 0, "a refused plan is left empty");

	in = input(1, 8, 4, 2, false, GiB);
	CHECK(!cagra_gpu_plan(&in, &plan, err, sizeof(err)), "one row is refused");
}

/*
 * The radix sort's scratch is counted: a budget that holds everything but
 * the scratch is refused, one byte more than everything is accepted.
 */
static void
test_sort_scratch_counted(void)
{
	CagraGpuPlanInput in = input(1000000, 128, 48, 32, true, 64 * GiB);
	CagraGpuPlan plan;
	size_t		reverse;
	char		err[256];

	in.sort_scratch_bytes = 3 * GiB;
	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "1M x 128 in 64 GiB: %s", err);
	reverse = plan.stage_bytes[CAGRA_GPU_STAGE_REVERSE];
	CHECK(reverse == plan.peak_bytes, "the 3 GiB scratch makes the reverse stage the peak");
	CHECK(cagra_gpu_buffer_bytes(&in, &plan, CAGRA_GPU_SORT_SCRATCH) == 3 * GiB,
		  "the scratch buffer is CUB's size");

	in.budget = reverse;
	CHECK(cagra_gpu_plan(&in, &plan, err, sizeof(err)), "exactly the reverse stage fits: %s", err);
	in.budget = reverse - 1;
	CHECK(!cagra_gpu_plan(&in, &plan, err, sizeof(err)),
		  "a budget one byte short of the reverse stage with its scratch must be refused");
	in.budget = reverse - 3 * GiB + 1;
	CHECK(!cagra_gpu_plan(&in, &plan, err, sizeof(err)),
		  "a budget for everything but the scratch must be refused");
}

static bool
same_ids(const int32_t *got, int64_t n_got, const int32_t *want, int64_t n_want)
{
	return n_got == n_want && memcmp(got, want, n_want * sizeof(int32_t)) == 0;
}

static void
test_group_by_key(void)
{
	const int32_t key[] = {2, 0, 2, 1, 0};
	const int32_t want_offsets[] = {0, 2, 3, 5, 5};
	const int32_t want_members[] = {1, 4, 3, 0, 2};
	int32_t		offsets[5];
	int32_t		members[5];

	/* key 3 has no item: an empty group */
	cagra_gpu_group_by_key(key, 5, 4, offsets, members);
	CHECK(same_ids(offsets, 5, want_offsets, 5), "group offsets %d %d %d %d %d",
		  offsets[0], offsets[1], offsets[2], offsets[3], offsets[4]);
	CHECK(same_ids(members, 5, want_members, 5), "group members in item order");
}

/*
 * Lists 0 {0, 1}, 1 {2}, 2 {3, 4, 5}, 3 {}, 4 {6, 7}: candidates of list 2
 * are its own rows first, then its probes' (an empty list counts as a
 * probe, as on the CPU), then more lists only while rows are short.
 */
static void
test_list_candidates(void)
{
	const int32_t assign[] = {0, 0, 1, 2, 2, 2, 4, 4};
	int32_t		offsets[6];
	int32_t		members[8];
	int32_t		stamp[5] = {0};
	int32_t		cands[8];
	int64_t		got;
	const int32_t pool[] = {2, 3, 0, 4, 1};
	const int32_t pool_coincide[] = {3, 2, 0};
	const int32_t pool_bad[] = {2, INT32_MAX, -1, 0};

	cagra_gpu_group_by_key(assign, 8, 5, offsets, members);

	got = cagra_gpu_list_candidates(offsets, members, 5, 2, pool, 5, 3, 1, stamp, cands);
	CHECK(same_ids(cands, got, (const int32_t[]) {3, 4, 5, 0, 1}, 5),
		  "3 probes of list 2: own, the empty list 3, list 0 (%lld rows)", (long long) got);

	got = cagra_gpu_list_candidates(offsets, members, 5, 0, (const int32_t[]) {0, 1, 2}, 3,
									2, 1, stamp, cands);
	CHECK(same_ids(cands, got, (const int32_t[]) {0, 1, 2}, 3),
		  "the stamps of list 2 do not hide lists from list 0 (%lld rows)", (long long) got);

	memset(stamp, 0, sizeof(stamp));	/* list 2 again: a fresh build's stamps */
	got = cagra_gpu_list_candidates(offsets, members, 5, 2, pool, 5, 3, 8, stamp, cands);
	CHECK(same_ids(cands, got, (const int32_t[]) {3, 4, 5, 0, 1, 6, 7, 2}, 8),
		  "short of 8 rows, list 2 goes on down its pool (%lld rows)", (long long) got);

	memset(stamp, 0, sizeof(stamp));	/* list 2 again: a fresh build's stamps */
	got = cagra_gpu_list_candidates(offsets, members, 5, 2, pool, 2, 3, 6, stamp, cands);
	CHECK(same_ids(cands, got, (const int32_t[]) {3, 4, 5, 0, 1, 2}, 6),
		  "pool exhausted: every list in order until 6 rows (%lld rows)", (long long) got);

	memset(stamp, 0, sizeof(stamp));	/* list 2 again: a fresh build's stamps */
	got = cagra_gpu_list_candidates(offsets, members, 5, 2, pool_coincide, 3, 2, 1,
									stamp, cands);
	CHECK(same_ids(cands, got, (const int32_t[]) {3, 4, 5}, 3),
		  "own list first when another centroid ranks before it (%lld rows)", (long long) got);

	memset(stamp, 0, sizeof(stamp));	/* list 2 again: a fresh build's stamps */
	got = cagra_gpu_list_candidates(offsets, members, 5, 2, pool_bad, 4, 2, 1, stamp, cands);
	CHECK(same_ids(cands, got, (const int32_t[]) {3, 4, 5, 0, 1}, 5),
		  "pool entries out of range are skipped (%lld rows)", (long long) got);
}

int
main(void)
{
	test_group_by_key();
	test_list_candidates();
	test_one_million();
	test_ten_million();
	test_refused();
	test_sort_scratch_counted();
	return unit_report("test_cagra_gpu_plan");
}
