# gnnvec: PGXS build.
#
#   make                  build gnnvec.so (and cuda/gnnvec_cuda.so when nvcc is found)
#   make install          install into the PostgreSQL found by PG_CONFIG
#   make test             everything: deps, build, unit + regression + TAP tests
#   make demo             a short end-to-end run on a throwaway cluster
#   make bench            benchmarks (tables and plots under bench/out/)
#
# Options: USE_CUDA=0 skips the GPU module; ASSERTS=1 builds with
# USE_ASSERT_CHECKING (make test does); SANITIZE=1 builds gnnvec.so with
# AddressSanitizer and UBSan (make test's second phase does; such a library
# loads only into a server started with libasan and libubsan in LD_PRELOAD).

EXTENSION  = gnnvec
MODULE_big = gnnvec
DATA       = $(wildcard sql/gnnvec--*.sql)

SRCS       = $(sort $(wildcard src/*.c src/*/*.c))
OBJS       = $(SRCS:.c=.o)
HEADERS    = $(wildcard src/*/*.h)

# PostgreSQL-free sources: every file that does not include postgres.h.
# They are unit-tested on their own and shared with bench/ drivers.
PURE_SRCS  = $(shell grep -L '"postgres.h"' $(SRCS))

PG_CONFIG ?= pg_config
ASSERTS   ?= 0
SANITIZE  ?= 0

PG_CPPFLAGS = -I$(CURDIR)/src -I$(CURDIR)/cuda
# -Wextra, less three checks that PostgreSQL's own headers and fixed callback
# signatures trip (ARR_DATA_OFFSET mixes signedness; AM callbacks take
# arguments an implementation may not need).
PG_CFLAGS   = -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
ifeq ($(ASSERTS),1)
PG_CPPFLAGS += -DUSE_ASSERT_CHECKING
endif
SHLIB_LINK  = -lopenblas -lm -lpthread -ldl
# Export only what PostgreSQL looks up by name (the magic block, _PG_init,
# each SQL-callable function and its info record), and bind our own calls
# to our own definitions: without this, a backend that loaded gnnvec first
# (shared_preload_libraries) sent another extension's calls to same-named
# functions here (pgvector's CREATE INDEX ran gnnvec's hnswbuild and
# crashed).
SHLIB_LINK += -Wl,--version-script=gnnvec.exports -Wl,-Bsymbolic
ifeq ($(SANITIZE),1)
SANITIZE_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer
PG_CFLAGS  += $(SANITIZE_FLAGS)
SHLIB_LINK += $(SANITIZE_FLAGS)
endif

# PGXS decides at include time whether there is anything extra to clean.
EXTRA_CLEAN = test/unit/bin bench/bin cuda/gnnvec_cuda.so .build-flags gnnvec.exports

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Rebuild everything when the build flavour changes, and when any header does.
BUILD_FLAGS := asserts=$(ASSERTS) sanitize=$(SANITIZE)
$(shell echo '$(BUILD_FLAGS)' | cmp -s - .build-flags || echo '$(BUILD_FLAGS)' > .build-flags)
$(OBJS): .build-flags $(HEADERS)

# (and the parallel build's worker entry point, named in CreateParallelContext)
gnnvec.exports: $(OBJS)
	{ echo '{ global: Pg_magic_func; _PG_init; hnsw_parallel_build_main;'; \
	  nm --defined-only $(OBJS) | \
	  awk '$$2 == "T" && $$3 ~ /^pg_finfo_/ { print substr($$3, 10) "; " $$3 ";" }'; \
	  echo 'local: *; };'; } > $@
$(shlib): gnnvec.exports

# ---------------------------------------------------------------------------
# GPU module: built when nvcc exists, never linked into gnnvec.so (dlopen'ed).
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
USE_CUDA  ?= $(if $(wildcard $(NVCC)),1,0)

ifeq ($(USE_CUDA),1)
CUDA_SRCS  = $(wildcard cuda/*.cu)
CUDA_LIB   = cuda/gnnvec_cuda.so
NVCC_FLAGS = -O3 -Xcompiler -fPIC,-Wall -I$(CURDIR)/src -I$(CURDIR)/cuda \
             -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
             -gencode arch=compute_90,code=compute_90

all: $(CUDA_LIB)

# The memory plan is pure C, shared with gnnvec.so and the unit tests;
# -Bsymbolic keeps the module on its own copy when gnnvec.so has one too.
CUDA_C_SRCS = src/cagra/cagra_gpu_plan.c

$(CUDA_LIB): $(CUDA_SRCS) $(CUDA_C_SRCS) $(wildcard cuda/*.h) src/cagra/cagra_gpu_plan.h
	$(NVCC) $(NVCC_FLAGS) -shared -Xlinker -Bsymbolic -o $@ $(CUDA_SRCS) $(CUDA_C_SRCS) -cudart static -lcublas

install: install-cuda
install-cuda: $(CUDA_LIB)
	$(INSTALL_SHLIB) $(CUDA_LIB) '$(DESTDIR)$(pkglibdir)/gnnvec_cuda.so'
endif

# ---------------------------------------------------------------------------
# Unit tests of the PostgreSQL-free code: test/unit/test_*.c, each linked
# with every pure source.
UNIT_SRCS  = $(wildcard test/unit/test_*.c)
UNIT_BINS  = $(patsubst test/unit/%.c,test/unit/bin/%,$(UNIT_SRCS))
UNIT_FLAGS = -O2 -g -Wall -Wextra -Werror -Isrc -Itest/unit

test/unit/bin/%: test/unit/%.c $(PURE_SRCS) $(HEADERS) $(wildcard test/unit/*.h)
	@mkdir -p test/unit/bin
	$(CC) $(UNIT_FLAGS) -o $@ $< $(PURE_SRCS) -lopenblas -lm -lpthread

# The GNN gradient checks need double precision: same sources, -DGNN_DOUBLE.
test/unit/bin/test_gnn_grad: test/unit/test_gnn_grad.c $(PURE_SRCS) $(HEADERS) $(wildcard test/unit/*.h)
	@mkdir -p test/unit/bin
	$(CC) $(UNIT_FLAGS) -DGNN_DOUBLE -o $@ $< $(PURE_SRCS) -lopenblas -lm -lpthread

unit-bins: $(UNIT_BINS)

# ---------------------------------------------------------------------------
# Benchmark drivers, no PostgreSQL: bench/NAME.c -> bench/bin/NAME, linked
# with every pure source (gen_dataset, kernel_bench, cagra_build, gnn_bench,
# lora_bench, ...).
bench/bin/%: bench/%.c $(PURE_SRCS) $(HEADERS) cuda/gnnvec_cuda.h
	@mkdir -p bench/bin
	$(CC) -O2 -g -Wall -Wextra -Isrc -o $@ $< $(PURE_SRCS) -lopenblas -lm -lpthread -ldl

.PHONY: test demo bench unit-bins install-cuda
test:
	bash test/run.sh test
demo:
	bash test/run.sh demo
bench:
	bash bench/run.sh
