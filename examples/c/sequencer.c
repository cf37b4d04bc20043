/* The lbm_kv sequencer sample in C: a cluster of two nodes in one process
 * shares a counter table whose conflict handler keeps the larger count;
 * several threads on both nodes increment one counter atomically with
 * lbmkv_table_update. Every increment yields a distinct value and the final
 * count is exactly the number of increments.
 *
 * Build: cc sequencer.c $(pkg-config --cflags --libs lbmkv) -lpthread */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lbmkv.h>

#define THREADS 4
#define INCREMENTS 100
#define TOTAL (THREADS * INCREMENTS)

static long parse_count(const uint8_t *data, size_t len) {
  char buf[32];
  if (len >= sizeof buf) return -1;
  memcpy(buf, data, len);
  buf[len] = '\0';
  return strtol(buf, NULL, 10);
}

/* Conflict handler: after a netsplit, keep the larger count. Runs on lbmkv's
 * threads; it only reads its arguments, so it is thread-safe. */
static bool keep_max(void *user_data, const lbmkv_conflict *conflict,
                     lbmkv_resolution *resolution) {
  lbmkv_slice local = {NULL, 0}, remote = {NULL, 0};
  bool has_local = lbmkv_conflict_local(conflict, &local);
  bool has_remote = lbmkv_conflict_remote(conflict, &remote);
  (void)user_data;
  if (!has_local && !has_remote) return lbmkv_resolution_set_delete(resolution, NULL) == 0;
  if (!has_remote ||
      (has_local && parse_count(local.data, local.len) >= parse_count(remote.data, remote.len)))
    return lbmkv_resolution_set_value(resolution, local, NULL) == LBMKV_STATUS_OK;
  return lbmkv_resolution_set_value(resolution, remote, NULL) == LBMKV_STATUS_OK;
}

/* Update function: the counter plus one (absent counts as 0). Runs on the
 * calling thread, possibly more than once. */
static bool increment(void *user_data, lbmkv_slice key, const lbmkv_slice *value,
                      lbmkv_update *update) {
  char buf[32];
  long n = value ? parse_count(value->data, value->len) : 0;
  lbmkv_slice next;
  (void)user_data;
  (void)key;
  if (n < 0) return false;
  next.data = (const uint8_t *)buf;
  next.len = (size_t)sprintf(buf, "%ld", n + 1);
  return lbmkv_update_set(update, next, NULL) == LBMKV_STATUS_OK;
}

typedef struct {
  const lbmkv_table *table;
  int seen[TOTAL + 1]; /* new values this thread obtained */
  int failures;
} worker;

static void *run_worker(void *arg) {
  worker *w = (worker *)arg;
  int i;
  for (i = 0; i < INCREMENTS; i++) {
    lbmkv_bytes now = {NULL, 0};
    bool has_now = false;
    lbmkv_error *err = NULL;
    lbmkv_status st = lbmkv_table_update(w->table, (lbmkv_slice){(const uint8_t *)"seq", 3},
                                         increment, NULL, NULL, NULL, &now, &has_now, &err);
    if (st != LBMKV_STATUS_OK) {
      fprintf(stderr, "update failed: %s: %s\n", lbmkv_status_name(st), lbmkv_error_message(err));
      lbmkv_error_free(err);
      w->failures++;
      continue;
    }
    if (has_now) {
      long n = parse_count(now.data, now.len);
      if (n >= 1 && n <= TOTAL) w->seen[n]++;
    }
    lbmkv_bytes_free(&now);
  }
  return NULL;
}

static lbmkv_node *start(const char *name) {
  lbmkv_config *cfg = lbmkv_config_new();
  lbmkv_node *node = NULL;
  lbmkv_error *err = NULL;
  if (lbmkv_config_set_name(cfg, name, &err) != LBMKV_STATUS_OK ||
      lbmkv_config_set_cookie(cfg, (lbmkv_slice){(const uint8_t *)"sequencer", 9}, &err) !=
          LBMKV_STATUS_OK ||
      lbmkv_node_start(cfg, &node, &err) != LBMKV_STATUS_OK) {
    fprintf(stderr, "cannot start %s: %s\n", name, lbmkv_error_message(err));
    lbmkv_error_free(err);
    node = NULL;
  }
  lbmkv_config_free(cfg);
  return node;
}

static lbmkv_table *counters(lbmkv_node *node) {
  lbmkv_table *t = NULL;
  lbmkv_error *err = NULL;
  if (lbmkv_table_create(node, "counters", keep_max, NULL, NULL, &t, &err) != LBMKV_STATUS_OK) {
    fprintf(stderr, "cannot create the table: %s\n", lbmkv_error_message(err));
    lbmkv_error_free(err);
    return NULL;
  }
  return t;
}

static size_t members(const lbmkv_node *node) {
  lbmkv_names *names = NULL;
  size_t n = 0;
  if (lbmkv_node_members(node, &names, NULL) == LBMKV_STATUS_OK) n = lbmkv_names_len(names);
  lbmkv_names_free(names);
  return n;
}

int main(void) {
  static worker workers[THREADS];
  pthread_t threads[THREADS];
  lbmkv_node *a = start("seq-a"), *b = start("seq-b");
  lbmkv_table *ta = NULL, *tb = NULL;
  lbmkv_bytes final_a = {NULL, 0}, final_b = {NULL, 0};
  bool found_a = false, found_b = false;
  int i, n, ok = 1, waited = 0;
  if (a == NULL || b == NULL) return 1;
  if (lbmkv_node_connect(b, lbmkv_node_address(a), NULL) != LBMKV_STATUS_OK) return 1;
  while ((members(a) != 2 || members(b) != 2) && waited++ < 1000) {
    struct timespec ts = {0, 10000000L};
    nanosleep(&ts, NULL);
  }
  ta = counters(a);
  tb = counters(b);
  if (ta == NULL || tb == NULL) return 1;

  for (i = 0; i < THREADS; i++) {
    workers[i].table = (i % 2 == 0) ? ta : tb; /* half the threads on each node */
    pthread_create(&threads[i], NULL, run_worker, &workers[i]);
  }
  for (i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);

  /* every value 1..TOTAL was handed out exactly once */
  for (n = 1; n <= TOTAL; n++) {
    int times = 0;
    for (i = 0; i < THREADS; i++) times += workers[i].seen[n];
    if (times != 1) {
      fprintf(stderr, "value %d was obtained %d times\n", n, times);
      ok = 0;
    }
  }
  for (i = 0; i < THREADS; i++) ok = ok && workers[i].failures == 0;

  /* an acknowledged write is visible on every member */
  lbmkv_table_get(ta, (lbmkv_slice){(const uint8_t *)"seq", 3}, false, &final_a, &found_a, NULL);
  lbmkv_table_get(tb, (lbmkv_slice){(const uint8_t *)"seq", 3}, false, &final_b, &found_b, NULL);
  printf("sequencer: %d threads x %d increments on 2 nodes: counter = %s on seq-a, %s on seq-b "
         "(expected %d)\n",
         THREADS, INCREMENTS, found_a ? (const char *)final_a.data : "(none)",
         found_b ? (const char *)final_b.data : "(none)", TOTAL);
  ok = ok && found_a && found_b && parse_count(final_a.data, final_a.len) == TOTAL &&
       parse_count(final_b.data, final_b.len) == TOTAL;
  lbmkv_bytes_free(&final_a);
  lbmkv_bytes_free(&final_b);
  lbmkv_table_free(ta);
  lbmkv_table_free(tb);
  lbmkv_node_free(b);
  lbmkv_node_free(a);
  printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
