/* Replicated put throughput from C, next to `lbmkv bench`'s Rust rows.
 *
 * The cluster has the shape of `lbmkv bench`'s "3 nodes" rows: this process's
 * node `bench-z` and two `lbmkv node` processes, `bench-a` and `bench-b`, on
 * loopback with cookie `lbmkv-bench`; 16-byte keys, 100-byte values, each
 * caller writing 1,000 distinct keys round-robin. 1 and 16 callers, each a
 * pthread making blocking lbmkv_table_put calls.
 *
 * bench_put [--ops N] [--json] [--rust-json FILE] [--lbmkv PATH]
 *   --ops N           puts per row (default $LBMKV_BENCH_OPS, else 20000, as lbmkv bench)
 *   --json            one line of JSON on stdout
 *   --rust-json FILE  the output of `lbmkv bench --json`: each row then gives
 *                     its ratio to Rust's ops/s with as many callers
 *   --lbmkv PATH      the lbmkv command (default $LBMKV_BIN, else target/release/lbmkv) */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lbmkv.h>

#define COOKIE "lbmkv-bench"
#define VALUE_SIZE 100
#define KEYS_PER_CALLER 1000
#define MAX_CALLERS 16
#define WITHIN 1.5
/* Bounds every wait outside the measured puts (those have lbmkv's request timeout). */
#define STEP_TIMEOUT_MS 10000

static const int callers_of_row[] = {1, MAX_CALLERS};
#define ROWS 2

/* ---- the `lbmkv node` children ---- */

static pid_t children[2];
/* The write ends of their stdin: a node ends at the end of its stdin, so they
 * go even when this process dies without killing them. */
static int child_stdin[2] = {-1, -1};
static int nchildren;

static void kill_children(void) {
  int i;
  for (i = 0; i < nchildren; i++) {
    kill(children[i], SIGKILL);
    waitpid(children[i], NULL, 0);
    if (child_stdin[i] >= 0) close(child_stdin[i]);
  }
  nchildren = 0;
}

static void on_signal(int sig) {
  int i;
  for (i = 0; i < nchildren; i++) kill(children[i], SIGKILL);
  _exit(128 + sig);
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static char failure[512];

static int failf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(failure, sizeof failure, fmt, ap);
  va_end(ap);
  return -1;
}

static int fail_lbmkv(const char *what, lbmkv_status st, lbmkv_error *err) {
  failf("%s: %s: %s", what, lbmkv_status_name(st), lbmkv_error_message(err));
  lbmkv_error_free(err);
  return -1;
}

/* Starts `lbmkv node` as `name` (seeded with `seed` when not NULL) and stores
 * the address of its READY line in `addr`. */
static int start_child(const char *exe, const char *name, const char *seed, char *addr, size_t cap) {
  int in[2], out[2], devnull;
  pid_t pid;
  char line[256];
  size_t len = 0;
  double deadline = now_ms() + STEP_TIMEOUT_MS;
  char *nl = NULL, *sp;
  if (pipe(in) != 0 || pipe(out) != 0) return failf("pipe: %s", strerror(errno));
  fcntl(in[1], F_SETFD, FD_CLOEXEC);
  fcntl(out[0], F_SETFD, FD_CLOEXEC);
  pid = fork();
  if (pid < 0) return failf("fork: %s", strerror(errno));
  if (pid == 0) {
    const char *argv[12] = {exe, "node", "--name", name, "--listen", "127.0.0.1:0", "--cookie", COOKIE};
    int argc = 8;
    if (seed) {
      argv[argc++] = "--seed";
      argv[argc++] = seed;
    }
    argv[argc] = NULL;
    devnull = open("/dev/null", O_WRONLY);
    dup2(in[0], 0);
    dup2(out[1], 1);
    if (devnull >= 0) dup2(devnull, 2);
    execv(exe, (char *const *)argv);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  children[nchildren] = pid;
  child_stdin[nchildren] = in[1];
  nchildren++;
  while (!nl) {
    struct pollfd p = {out[0], POLLIN, 0};
    ssize_t n;
    int left = (int)(deadline - now_ms());
    if (left <= 0 || poll(&p, 1, left) <= 0) {
      close(out[0]);
      return failf("%s printed no READY line within %d ms", name, STEP_TIMEOUT_MS);
    }
    n = read(out[0], line + len, sizeof line - 1 - len);
    if (n <= 0) {
      close(out[0]);
      return failf("%s (%s) exited before READY", name, exe);
    }
    len += (size_t)n;
    line[len] = '\0';
    nl = strchr(line, '\n');
    if (!nl && len == sizeof line - 1) break;
  }
  /* Nothing else is read: the node writes nothing more without commands. */
  close(out[0]);
  if (nl) *nl = '\0';
  sp = strrchr(line, ' ');
  if (!nl || strncmp(line, "READY ", 6) != 0 || !sp || strlen(sp + 1) >= cap)
    return failf("unexpected first line from %s: %s", name, line);
  strcpy(addr, sp + 1);
  return 0;
}

/* ---- the Rust rows: just enough JSON to read `lbmkv bench --json` ---- */

typedef struct {
  const char *p, *end;
} json_in;

static void ws(json_in *in) {
  while (in->p < in->end && (*in->p == ' ' || *in->p == '\n' || *in->p == '\r' || *in->p == '\t')) in->p++;
}

static int eat(json_in *in, char c) {
  ws(in);
  if (in->p < in->end && *in->p == c) {
    in->p++;
    return 1;
  }
  return 0;
}

/* A string's raw text (escapes left as they are, cut at `cap`). */
static int json_string(json_in *in, char *buf, size_t cap) {
  size_t n = 0;
  if (!eat(in, '"')) return -1;
  while (in->p < in->end && *in->p != '"') {
    if (*in->p == '\\' && in->p + 1 < in->end) {
      if (n + 1 < cap) buf[n++] = *in->p;
      in->p++;
    }
    if (n + 1 < cap) buf[n++] = *in->p;
    in->p++;
  }
  if (cap) buf[n] = '\0';
  return eat(in, '"') ? 0 : -1;
}

static int json_number(json_in *in, double *out) {
  char *stop;
  ws(in);
  *out = strtod(in->p, &stop);
  if (stop == in->p) return -1;
  in->p = stop;
  return 0;
}

static int json_skip(json_in *in, int depth) {
  char scratch[8];
  double d;
  ws(in);
  if (in->p >= in->end || depth > 64) return -1;
  if (*in->p == '"') return json_string(in, scratch, 0);
  if (*in->p == '{' || *in->p == '[') {
    char close = *in->p == '{' ? '}' : ']';
    int object = *in->p == '{';
    in->p++;
    if (eat(in, close)) return 0;
    do {
      if (object && (json_string(in, scratch, 0) != 0 || !eat(in, ':'))) return -1;
      if (json_skip(in, depth + 1) != 0) return -1;
    } while (eat(in, ','));
    return eat(in, close) ? 0 : -1;
  }
  if (strncmp(in->p, "true", 4) == 0 || strncmp(in->p, "null", 4) == 0) {
    in->p += 4;
    return 0;
  }
  if (strncmp(in->p, "false", 5) == 0) {
    in->p += 5;
    return 0;
  }
  return json_number(in, &d);
}

typedef struct {
  char id[32], nodes[32], op[32];
  double clients, ops_per_s;
} rust_row;

static int json_row(json_in *in, rust_row *r) {
  char k[32];
  memset(r, 0, sizeof *r);
  if (!eat(in, '{')) return -1;
  if (eat(in, '}')) return 0;
  do {
    if (json_string(in, k, sizeof k) != 0 || !eat(in, ':')) return -1;
    if (strcmp(k, "id") == 0) {
      if (json_string(in, r->id, sizeof r->id) != 0) return -1;
    } else if (strcmp(k, "data") == 0) {
      if (!eat(in, '{')) return -1;
      if (eat(in, '}')) continue;
      do {
        int st, text;
        if (json_string(in, k, sizeof k) != 0 || !eat(in, ':')) return -1;
        ws(in);
        /* Other rows may give these as numbers (`scale_write`: nodes 3, 5, 7). */
        text = in->p < in->end && *in->p == '"';
        if (strcmp(k, "nodes") == 0 && text) st = json_string(in, r->nodes, sizeof r->nodes);
        else if (strcmp(k, "op") == 0 && text) st = json_string(in, r->op, sizeof r->op);
        else if (strcmp(k, "clients") == 0) st = json_number(in, &r->clients);
        else if (strcmp(k, "ops_per_s") == 0) st = json_number(in, &r->ops_per_s);
        else st = json_skip(in, 2);
        if (st != 0) return -1;
      } while (eat(in, ','));
      if (!eat(in, '}')) return -1;
    } else if (json_skip(in, 1) != 0) {
      return -1;
    }
  } while (eat(in, ','));
  return eat(in, '}') ? 0 : -1;
}

/* ops/s of the Rust rows "3 nodes: put, N client(s)" into `rates[row]` (0: none). */
static int rust_rates(const char *path, double rates[ROWS]) {
  FILE *f = fopen(path, "rb");
  char *text, k[32];
  long size;
  json_in in;
  int ok = -1, i;
  if (!f) return failf("%s: %s", path, strerror(errno));
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  rewind(f);
  text = malloc((size_t)size + 1);
  if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
    fclose(f);
    free(text);
    return failf("%s: cannot read it", path);
  }
  fclose(f);
  text[size] = '\0'; /* strtod stops there */
  in.p = text;
  in.end = text + size;
  if (!eat(&in, '{')) goto out;
  do {
    if (json_string(&in, k, sizeof k) != 0 || !eat(&in, ':')) goto out;
    if (strcmp(k, "results") != 0) {
      if (json_skip(&in, 1) != 0) goto out;
      continue;
    }
    if (!eat(&in, '[')) goto out;
    if (eat(&in, ']')) continue;
    do {
      rust_row r;
      if (json_row(&in, &r) != 0) goto out;
      if (strcmp(r.id, "write") == 0 && strcmp(r.nodes, "3 nodes") == 0 && strcmp(r.op, "put") == 0)
        for (i = 0; i < ROWS; i++)
          if (r.clients == callers_of_row[i]) rates[i] = r.ops_per_s;
    } while (eat(&in, ','));
    if (!eat(&in, ']')) goto out;
  } while (eat(&in, ','));
  ok = 0;
out:
  free(text);
  return ok == 0 ? 0 : failf("%s: not the JSON of lbmkv bench --json", path);
}

/* ---- the puts ---- */

typedef struct {
  const lbmkv_table *t;
  int caller, per_caller;
  long long salt;
  uint64_t *samples_ns;
  lbmkv_status st;
  char error[256];
} caller_args;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fill_value(uint8_t v[VALUE_SIZE], long long n) {
  char digits[24];
  memset(v, 'v', VALUE_SIZE);
  snprintf(digits, sizeof digits, "%016lld", n);
  memcpy(v, digits, 16);
}

static void *caller(void *arg) {
  caller_args *a = arg;
  char keys[KEYS_PER_CALLER][17];
  uint8_t v[VALUE_SIZE];
  int i;
  for (i = 0; i < KEYS_PER_CALLER; i++) sprintf(keys[i], "key-%012d", a->caller * 1000000 + i);
  for (i = 0; i < a->per_caller; i++) {
    lbmkv_error *err = NULL;
    lbmkv_slice k = {(const uint8_t *)keys[i % KEYS_PER_CALLER], 16};
    lbmkv_slice vs = {v, VALUE_SIZE};
    uint64_t begun;
    fill_value(v, a->salt + i);
    begun = now_ns();
    a->st = lbmkv_table_put(a->t, k, vs, NULL, NULL, &err);
    if (a->st != LBMKV_STATUS_OK) {
      snprintf(a->error, sizeof a->error, "put: %s: %s", lbmkv_status_name(a->st), lbmkv_error_message(err));
      lbmkv_error_free(err);
      return NULL;
    }
    a->samples_ns[i] = now_ns() - begun;
  }
  return NULL;
}

static int cmp_u64(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
  return a < b ? -1 : a > b;
}

typedef struct {
  double p50_us, p99_us, ops_per_s;
} latencies;

/* Values differ from one run to the next, as in lbmkv bench, so that no put
 * repeats the value already stored. */
static long long run;

static int drive(const lbmkv_table *t, int callers, int ops, latencies *out) {
  caller_args args[MAX_CALLERS];
  pthread_t th[MAX_CALLERS];
  int per_caller = ops / callers > 0 ? ops / callers : 1, c, started = 0, rc = 0;
  size_t n = (size_t)per_caller * (size_t)callers;
  uint64_t *samples = malloc(n * sizeof *samples), t0, wall;
  long long salt = ++run * 1000000007LL;
  if (!samples) return failf("out of memory");
  t0 = now_ns();
  for (c = 0; c < callers; c++) {
    args[c] = (caller_args){t, c, per_caller, salt, samples + (size_t)c * (size_t)per_caller, LBMKV_STATUS_OK, ""};
    if (pthread_create(&th[c], NULL, caller, &args[c]) != 0) {
      rc = failf("pthread_create failed");
      break;
    }
    started++;
  }
  for (c = 0; c < started; c++) pthread_join(th[c], NULL);
  wall = now_ns() - t0;
  for (c = 0; c < started && rc == 0; c++)
    if (args[c].st != LBMKV_STATUS_OK) rc = failf("%s", args[c].error);
  if (rc == 0) {
    /* The same picks as lbmkv bench, so that the percentiles compare. */
    size_t i50 = (size_t)(n * 0.50), i99 = (size_t)(n * 0.99);
    qsort(samples, n, sizeof *samples, cmp_u64);
    out->p50_us = samples[i50 < n ? i50 : n - 1] / 1e3;
    out->p99_us = samples[i99 < n ? i99 : n - 1] / 1e3;
    out->ops_per_s = n / (wall / 1e9);
  }
  free(samples);
  return rc;
}

static int put_once(const lbmkv_table *t, const char *key, const char *val, lbmkv_status *st_out) {
  lbmkv_error *err = NULL;
  lbmkv_slice k = {(const uint8_t *)key, strlen(key)}, v = {(const uint8_t *)val, strlen(val)};
  lbmkv_status st = lbmkv_table_put(t, k, v, NULL, NULL, &err);
  if (st_out) *st_out = st;
  if (st == LBMKV_STATUS_OK) return 0;
  return fail_lbmkv("put", st, err);
}

static int bench(const char *exe, int ops, latencies rows[ROWS]) {
  char a[128], b[128], key[17];
  lbmkv_config *cfg = NULL;
  lbmkv_node *node = NULL;
  lbmkv_table *t = NULL;
  lbmkv_error *err = NULL;
  lbmkv_status st;
  double deadline;
  int rc = -1, i;
  fprintf(stderr, "c put: starting bench-a and bench-b\n");
  if (start_child(exe, "bench-a", NULL, a, sizeof a) != 0) goto out;
  if (start_child(exe, "bench-b", a, b, sizeof b) != 0) goto out;
  cfg = lbmkv_config_new();
  lbmkv_config_set_name(cfg, "bench-z", NULL);
  lbmkv_config_set_cookie(cfg, (lbmkv_slice){(const uint8_t *)COOKIE, strlen(COOKIE)}, NULL);
  lbmkv_config_add_seed(cfg, a, NULL);
  lbmkv_config_add_seed(cfg, b, NULL);
  st = lbmkv_node_start(cfg, &node, &err);
  if (st != LBMKV_STATUS_OK) {
    fail_lbmkv("start", st, err);
    goto out;
  }
  for (deadline = now_ms() + STEP_TIMEOUT_MS;;) {
    lbmkv_names *m = NULL;
    size_t n;
    st = lbmkv_node_members(node, &m, &err);
    if (st != LBMKV_STATUS_OK) {
      fail_lbmkv("members", st, err);
      goto out;
    }
    n = lbmkv_names_len(m);
    lbmkv_names_free(m);
    if (n >= 3) break;
    if (now_ms() > deadline) {
      failf("only %zu members within %d ms", n, STEP_TIMEOUT_MS);
      goto out;
    }
    sleep_ms(10);
  }
  st = lbmkv_table_create(node, "bench", NULL, NULL, NULL, &t, &err);
  if (st != LBMKV_STATUS_OK) {
    fail_lbmkv("create", st, err);
    goto out;
  }
  /* The first write may meet a sequencer that is still settling. */
  for (deadline = now_ms() + STEP_TIMEOUT_MS;;) {
    if (put_once(t, "warm-up", "x", &st) == 0) break;
    if (st != LBMKV_STATUS_UNAVAILABLE || now_ms() > deadline) goto out;
    sleep_ms(50);
  }
  for (i = 0; i < 200; i++) {
    sprintf(key, "key-%012d", 900000000 + i % 10);
    if (put_once(t, key, "warm-up", NULL) != 0) goto out;
  }
  for (i = 0; i < ROWS; i++) {
    fprintf(stderr, "c put: %d caller(s)\n", callers_of_row[i]);
    if (drive(t, callers_of_row[i], ops, &rows[i]) != 0) goto out;
  }
  rc = 0;
out:
  lbmkv_config_free(cfg);
  lbmkv_table_free(t);
  lbmkv_node_free(node);
  kill_children();
  return rc;
}

static void si(double x, char *buf, size_t cap) {
  if (x >= 1e6) snprintf(buf, cap, "%.1fM", x / 1e6);
  else if (x >= 1e3) snprintf(buf, cap, "%.1fk", x / 1e3);
  else snprintf(buf, cap, "%.0f", x);
}

static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') putchar('\\');
    putchar(*s);
  }
  putchar('"');
}

static int usage(const char *why) {
  fprintf(stderr, "bench_put: %s\nusage: bench_put [--ops N] [--json] [--rust-json FILE] [--lbmkv PATH]\n", why);
  return 2;
}

int main(int argc, char **argv) {
  const char *exe = getenv("LBMKV_BIN"), *rust_json = NULL, *env_ops = getenv("LBMKV_BENCH_OPS");
  int ops = env_ops ? atoi(env_ops) : 20000, json = 0, i;
  double rust[ROWS] = {0, 0};
  latencies rows[ROWS];
  struct sigaction sa;
  if (!exe) exe = "target/release/lbmkv";
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) json = 1;
    else if (i + 1 >= argc) return usage("an option lacks its value, or is unknown");
    else if (strcmp(argv[i], "--ops") == 0) ops = atoi(argv[++i]);
    else if (strcmp(argv[i], "--rust-json") == 0) rust_json = argv[++i];
    else if (strcmp(argv[i], "--lbmkv") == 0) exe = argv[++i];
    else return usage("unknown option");
  }
  if (ops < 1) return usage("--ops needs at least 1");
  if (rust_json && rust_rates(rust_json, rust) != 0) {
    fprintf(stderr, "bench_put: %s\n", failure);
    return 1;
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  if (bench(exe, ops, rows) != 0) {
    fprintf(stderr, "bench_put: %s\n", failure);
    return 1;
  }
  if (json) {
    printf("{\"bench\":\"c put\",\"nodes\":\"3 nodes\",\"op\":\"put\",\"value_bytes\":%d,\"ops\":%d,\"rust_json\":",
           VALUE_SIZE, ops);
    if (rust_json) json_str(rust_json);
    else printf("null");
    printf(",\"results\":[");
    for (i = 0; i < ROWS; i++) {
      printf("%s{\"mode\":\"pthreads\",\"callers\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f,\"ops_per_s\":%.1f,", i ? "," : "",
             callers_of_row[i], rows[i].p50_us, rows[i].p99_us, rows[i].ops_per_s);
      if (rust[i] > 0)
        printf("\"rust_ops_per_s\":%.1f,\"ratio\":%.4f,\"within_1_5x\":%s}", rust[i], rows[i].ops_per_s / rust[i],
               rows[i].ops_per_s / rust[i] >= 1 / WITHIN ? "true" : "false");
      else
        printf("\"rust_ops_per_s\":null,\"ratio\":null,\"within_1_5x\":null}");
    }
    printf("]}\n");
    return 0;
  }
  printf("c put, 3 nodes, %d-byte values, %d puts per row\n", VALUE_SIZE, ops);
  for (i = 0; i < ROWS; i++) {
    char rate[16], rrate[16];
    si(rows[i].ops_per_s, rate, sizeof rate);
    printf("  pthreads %2d caller(s): p50 %5.0f µs, p99 %6.0f µs, %6s ops/s", callers_of_row[i], rows[i].p50_us,
           rows[i].p99_us, rate);
    if (rust[i] > 0) {
      double ratio = rows[i].ops_per_s / rust[i];
      si(rust[i], rrate, sizeof rrate);
      if (ratio >= 1 / WITHIN) printf("  %.2fx Rust (%s ops/s): within %.1fx\n", ratio, rrate, WITHIN);
      else printf("  %.2fx Rust (%s ops/s): NOT within %.1fx (%.1fx slower)\n", ratio, rrate, WITHIN, 1 / ratio);
    } else if (rust_json) {
      printf("  (no Rust row with %d client(s))\n", callers_of_row[i]);
    } else {
      putchar('\n');
    }
  }
  return 0;
}
