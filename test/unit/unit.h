/*
 * unit.h
 *		A minimal test harness for the PostgreSQL-free code.  Each test
 *		program ends by printing "<name>: N passed, N failed" and exits
 *		non-zero on any failure; test/run.sh adds the counts up.
 */
#ifndef GNNVEC_UNIT_H
#define GNNVEC_UNIT_H

#include <stdio.h>
#include <stdlib.h>

static int	unit_passed;
static int	unit_failed;

/* One check: counts once, prints the location and message on failure. */
#define CHECK(cond, ...) \
	do { \
		if (cond) \
			unit_passed++; \
		else \
		{ \
			unit_failed++; \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__); \
			fputc('\n', stderr); \
		} \
	} while (0)

static inline int
unit_report(const char *name)
{
	printf("%s: %d passed, %d failed\n", name, unit_passed, unit_failed);
	return unit_failed == 0 ? 0 : 1;
}

#endif							/* GNNVEC_UNIT_H */
