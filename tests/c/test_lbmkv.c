/* Tests of the lbmkv C API, compiled against the installed header and
 * library (shared and static), run plainly, under valgrind and with
 * AddressSanitizer by `make test-c`. */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"

/* ---------------------------------------------------------------- helpers */

/* A config for test nodes: loopback, fixed cookie, a given name. */
static lbmkv_config *test_config(const char *name) {
  lbmkv_config *cfg = lbmkv_config_new();
  if (lbmkv_config_set_name(cfg, name, NULL) != LBMKV_STATUS_OK ||
      lbmkv_config_set_listen(cfg, "127.0.0.1:0", NULL) != LBMKV_STATUS_OK ||
      lbmkv_config_set_cookie(cfg, S("c-test-cookie"), NULL) != LBMKV_STATUS_OK) {
    lbmkv_config_free(cfg);
    return NULL;
  }
  return cfg;
}

static lbmkv_node *start_node(const char *name) {
  lbmkv_config *cfg = test_config(name);
  lbmkv_node *node = NULL;
  lbmkv_error *err = NULL;
  if (cfg == NULL) return NULL;
  if (lbmkv_node_start(cfg, &node, &err) != LBMKV_STATUS_OK) {
    fprintf(stderr, "  cannot start %s: %s\n", name, lbmkv_error_message(err));
    lbmkv_error_free(err);
    node = NULL;
  }
  lbmkv_config_free(cfg);
  return node;
}

/* A loopback TCP port that was free a moment ago; 0 when none was found. */
static int free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int port = 0, fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

static size_t member_count(const lbmkv_node *node) {
  lbmkv_names *names = NULL;
  size_t n;
  if (lbmkv_node_members(node, &names, NULL) != LBMKV_STATUS_OK) return 0;
  n = lbmkv_names_len(names);
  lbmkv_names_free(names);
  return n;
}

/* Counts calls of a user_data finalizer. */
typedef struct {
  pthread_mutex_t lock;
  int frees;
} free_counter;

static void count_free(void *user_data) {
  free_counter *c = (free_counter *)user_data;
  pthread_mutex_lock(&c->lock);
  c->frees++;
  pthread_mutex_unlock(&c->lock);
}

static int frees_of(free_counter *c) {
  int n;
  pthread_mutex_lock(&c->lock);
  n = c->frees;
  pthread_mutex_unlock(&c->lock);
  return n;
}

static int freed_once(void *arg) { return frees_of((free_counter *)arg) == 1; }

static bool keep_local(void *user_data, const lbmkv_conflict *c, lbmkv_resolution *r) {
  lbmkv_slice v;
  (void)user_data;
  if (lbmkv_conflict_local(c, &v)) return lbmkv_resolution_set_value(r, v, NULL) == LBMKV_STATUS_OK;
  return lbmkv_resolution_set_delete(r, NULL) == LBMKV_STATUS_OK;
}

/* Update functions. */

/* Increments a decimal counter (absent = 0). */
static bool increment(void *user_data, lbmkv_slice key, const lbmkv_slice *value,
                      lbmkv_update *update) {
  char buf[32];
  long n = 0;
  (void)user_data;
  (void)key;
  if (value != NULL) {
    size_t len = value->len < sizeof buf - 1 ? value->len : sizeof buf - 1;
    memcpy(buf, value->data, len);
    buf[len] = '\0';
    n = strtol(buf, NULL, 10);
  }
  sprintf(buf, "%ld", n + 1);
  return lbmkv_update_set(update, (lbmkv_slice){(const uint8_t *)buf, strlen(buf)}, NULL) ==
         LBMKV_STATUS_OK;
}

static bool delete_it(void *user_data, lbmkv_slice key, const lbmkv_slice *value,
                      lbmkv_update *update) {
  (void)user_data;
  (void)key;
  (void)value;
  return lbmkv_update_delete(update, NULL) == LBMKV_STATUS_OK;
}

static bool decide_nothing(void *user_data, lbmkv_slice key, const lbmkv_slice *value,
                           lbmkv_update *update) {
  int *calls = (int *)user_data;
  (void)key;
  (void)value;
  (void)update;
  (*calls)++;
  return true;
}

static bool refuse(void *user_data, lbmkv_slice key, const lbmkv_slice *value,
                   lbmkv_update *update) {
  (void)user_data;
  (void)key;
  (void)value;
  (void)update;
  return false;
}

/* For update_all: upper-cases values of keys starting with "u", deletes keys
 * starting with "d", keeps the rest. */
static bool upper_or_delete(void *user_data, lbmkv_slice key, const lbmkv_slice *value,
                            lbmkv_update *update) {
  char buf[64];
  size_t i;
  (void)user_data;
  if (value == NULL) return false;
  if (key.len > 0 && key.data[0] == 'd') return lbmkv_update_delete(update, NULL) == LBMKV_STATUS_OK;
  if (key.len == 0 || key.data[0] != 'u' || value->len > sizeof buf) return true;
  for (i = 0; i < value->len; i++) {
    char ch = (char)value->data[i];
    buf[i] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 'a' + 'A') : ch;
  }
  return lbmkv_update_set(update, (lbmkv_slice){(const uint8_t *)buf, value->len}, NULL) ==
         LBMKV_STATUS_OK;
}

/* Log records seen by a log callback: the first dial failure, and the
 * level it came at. */
typedef struct {
  free_counter freed; /* first: count_free frees the user data */
  pthread_mutex_t lock;
  int calls;
  int dial_failures;
  lbmkv_log_level dial_failure_level;
  char target[64];
} log_seen;

static void on_log(void *user_data, lbmkv_log_level level, const char *target,
                   const char *message) {
  log_seen *seen = (log_seen *)user_data;
  pthread_mutex_lock(&seen->lock);
  seen->calls++;
  if (strstr(message, "dial failed") != NULL && strstr(message, "127.0.0.1:1") != NULL) {
    if (seen->dial_failures++ == 0) {
      seen->dial_failure_level = level;
      snprintf(seen->target, sizeof seen->target, "%s", target);
    }
  }
  pthread_mutex_unlock(&seen->lock);
}

static int saw_dial_failure(void *arg) {
  log_seen *seen = (log_seen *)arg;
  int n;
  pthread_mutex_lock(&seen->lock);
  n = seen->dial_failures;
  pthread_mutex_unlock(&seen->lock);
  return n > 0;
}

/* ------------------------------------------------------------------ tests */

static void test_version_and_status_names(void) {
  CHECK(strcmp(lbmkv_version(), LBMKV_VERSION) == 0);
  CHECK(LBMKV_VERSION_NUMBER == LBMKV_VERSION_MAJOR * 10000 + LBMKV_VERSION_MINOR * 100 +
                                    LBMKV_VERSION_PATCH);
  CHECK(LBMKV_STATUS_OK == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_OK), "OK") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_UNAVAILABLE), "UNAVAILABLE") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_TIMEOUT), "TIMEOUT") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_INVALID_ARGUMENT), "INVALID_ARGUMENT") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_CLOSED), "CLOSED") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_NO_SUCH_TABLE), "NO_SUCH_TABLE") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_WOULD_DEADLOCK), "WOULD_DEADLOCK") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_ABORTED), "ABORTED") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_IO), "IO") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_PROTOCOL), "PROTOCOL") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_INTERNAL), "INTERNAL") == 0);
  CHECK(strcmp(lbmkv_status_name(LBMKV_STATUS_PANIC), "PANIC") == 0);
  CHECK(strcmp(lbmkv_status_name(9999), "UNKNOWN") == 0);
}

static void test_config_setters_check_their_input(void) {
  lbmkv_config *cfg = lbmkv_config_new();
  CHECK(cfg != NULL);
  OK(lbmkv_config_set_name, cfg, "c-config");
  OK(lbmkv_config_set_listen, cfg, "127.0.0.1:0");
  OK(lbmkv_config_add_seed, cfg, "127.0.0.1:1");
  OK(lbmkv_config_set_cookie, cfg, S("secret"));
  OK(lbmkv_config_set_failure_timeout_ms, cfg, 3000);
  OK(lbmkv_config_set_heartbeat_interval_ms, cfg, 200);
  OK(lbmkv_config_set_request_timeout_ms, cfg, 4000);
  OK(lbmkv_config_set_handler_timeout_ms, cfg, 4000);
  OK(lbmkv_config_set_advertise, cfg, "127.0.0.1:7000");
  OK(lbmkv_config_set_advertise, cfg, "node-a.example:7000");
  OK(lbmkv_config_set_min_members, cfg, 0);
  OK(lbmkv_config_set_min_members, cfg, 3);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_name, cfg, "");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_name, cfg, "\xff\xfe");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_name, cfg, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_listen, cfg, "no-port");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_add_seed, cfg, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_advertise, cfg, "no-port");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_advertise, cfg, ":7000");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_advertise, cfg, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_advertise, NULL, "127.0.0.1:7000");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_min_members, NULL, 2);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_cookie, cfg, S(""));
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_cookie, cfg,
        ((lbmkv_slice){NULL, 4}));
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_failure_timeout_ms, cfg, 0);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_heartbeat_interval_ms, NULL, 10);
  lbmkv_config_free(cfg);
  lbmkv_config_free(NULL);
}

/* Every setter of the configuration (the options of Python and Node.js
 * included), each with an effect the node shows or a start it refuses. */
static void test_every_config_setter_takes_effect(void) {
  lbmkv_config *cfg = lbmkv_config_new();
  lbmkv_node *node = NULL;
  lbmkv_table *t = NULL;
  lbmkv_bytes prev = {0}, text = {0};
  bool had = false;
  char big_key[65], big_value[129];
  CHECK(cfg != NULL);
  OK(lbmkv_config_set_name, cfg, "c-every-option");
  OK(lbmkv_config_set_listen, cfg, "127.0.0.1:0");
  OK(lbmkv_config_set_advertise, cfg, "127.0.0.1:7000");
  OK(lbmkv_config_set_min_members, cfg, 0);
  OK(lbmkv_config_set_cookie, cfg, S("every-option"));
  OK(lbmkv_config_set_failure_timeout_ms, cfg, 1500);
  OK(lbmkv_config_set_heartbeat_interval_ms, cfg, 100);
  OK(lbmkv_config_set_request_timeout_ms, cfg, 3000);
  OK(lbmkv_config_set_handler_timeout_ms, cfg, 2000);
  OK(lbmkv_config_set_anti_entropy_interval_ms, cfg, 500);
  OK(lbmkv_config_set_tombstone_retention_ms, cfg, 60000);
  OK(lbmkv_config_set_conflict_log_limit, cfg, 10);
  OK(lbmkv_config_set_conflict_log_limit, cfg, 0);
  OK(lbmkv_config_set_max_key_size, cfg, 64);
  OK(lbmkv_config_set_max_value_size, cfg, 128);
  OK(lbmkv_config_set_max_frame_size, cfg, 2 * 1024 * 1024);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_anti_entropy_interval_ms, cfg, 0);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_tombstone_retention_ms, cfg, 0);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_max_key_size, cfg, 0);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_max_value_size, cfg, 0);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_max_frame_size, cfg, 0);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_conflict_log_limit, NULL, 1);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_max_key_size, NULL, 1);
  OK(lbmkv_node_start, cfg, &node);
  CHECK(node != NULL && strcmp(lbmkv_node_address(node), "127.0.0.1:7000") == 0);
  OK(lbmkv_table_create, node, "limits", NULL, NULL, NULL, &t);
  memset(big_key, 'k', sizeof big_key);
  memset(big_value, 'v', sizeof big_value);
  /* 64-byte keys and 128-byte values fit; one byte more does not. */
  OK(lbmkv_table_put, t, ((lbmkv_slice){(const uint8_t *)big_key, 64}),
     ((lbmkv_slice){(const uint8_t *)big_value, 128}), &prev, &had);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put, t,
        ((lbmkv_slice){(const uint8_t *)big_key, 65}), S("v"), &prev, &had);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put, t, S("k"),
        ((lbmkv_slice){(const uint8_t *)big_value, 129}), &prev, &had);
  /* The metrics: Prometheus text, NUL-terminated, counting the one write. */
  OK(lbmkv_node_metrics, node, &text);
  CHECK(text.data != NULL && text.data[text.len] == '\0');
  CHECK(strstr((const char *)text.data, "# TYPE lbmkv_writes_total counter\n") != NULL);
  CHECK(strstr((const char *)text.data, "\nlbmkv_writes_total 1\n") != NULL);
  CHECK(strstr((const char *)text.data, "\nlbmkv_table_entries{table=\"limits\"} 1\n") != NULL);
  CHECK(strstr((const char *)text.data, "\nlbmkv_members 1\n") != NULL);
  lbmkv_bytes_free(&text);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_metrics, NULL, &text);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_metrics, node, NULL);
  lbmkv_table_free(t);
  OK(lbmkv_node_close, node);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_node_metrics, node, &text);
  lbmkv_node_free(node);
  /* A frame size that the key and value limits do not fit is refused at start. */
  node = NULL;
  OK(lbmkv_config_set_max_value_size, cfg, 4 * 1024 * 1024);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_start, cfg, &node);
  CHECK(node == NULL);
  lbmkv_config_free(cfg);
}

static void test_node_start_rejects_an_unusable_config(void) {
  lbmkv_config *cfg = test_config("c-bad-timeouts");
  lbmkv_node *node = NULL;
  CHECK(cfg != NULL);
  /* A failure timeout shorter than the heartbeat interval cannot work. */
  OK(lbmkv_config_set_heartbeat_interval_ms, cfg, 500);
  OK(lbmkv_config_set_failure_timeout_ms, cfg, 100);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_start, cfg, &node);
  CHECK(node == NULL); /* outputs are written only on success */
  lbmkv_config_free(cfg);
  cfg = test_config("c-bad-listen");
  CHECK(cfg != NULL);
  OK(lbmkv_config_set_listen, cfg, "127.0.0.1:99999");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_start, cfg, &node);
  CHECK(node == NULL);
  lbmkv_config_free(cfg);
}

static void test_min_members_fails_naming_the_seed(void) {
  lbmkv_config *cfg = test_config("c-lonely");
  lbmkv_node *node = NULL;
  lbmkv_error *err = NULL;
  lbmkv_status st;
  CHECK(cfg != NULL);
  /* Nobody listens on port 1: the seed is refused. */
  OK(lbmkv_config_add_seed, cfg, "127.0.0.1:1");
  OK(lbmkv_config_set_min_members, cfg, 2);
  OK(lbmkv_config_set_request_timeout_ms, cfg, 1000);
  st = lbmkv_node_start(cfg, &node, &err);
  lbmkv_config_free(cfg);
  if (st != LBMKV_STATUS_UNAVAILABLE) {
    FAIL_AT("lbmkv_node_start returned %s: %s", lbmkv_status_name(st),
            lbmkv_error_message(err));
    lbmkv_error_free(err);
    lbmkv_node_free(node);
    return;
  }
  CHECK(node == NULL);
  CHECK(lbmkv_error_status(err) == LBMKV_STATUS_UNAVAILABLE);
  if (strstr(lbmkv_error_message(err), "1 of 2 members") == NULL ||
      strstr(lbmkv_error_message(err), "127.0.0.1:1: ") == NULL) {
    FAIL_AT("the message does not name the seed: %s", lbmkv_error_message(err));
    lbmkv_error_free(err);
    return;
  }
  lbmkv_error_free(err);
}

static void test_advertised_node_is_joined_with_min_members(void) {
  int port = free_port();
  char addr[32];
  lbmkv_config *cfg;
  lbmkv_node *a = NULL, *b = NULL;
  CHECK(port > 0);
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  cfg = test_config("c-advertised");
  CHECK(cfg != NULL);
  OK(lbmkv_config_set_listen, cfg, addr);
  OK(lbmkv_config_set_advertise, cfg, addr);
  OK(lbmkv_node_start, cfg, &a);
  lbmkv_config_free(cfg);
  CHECK(strcmp(lbmkv_node_address(a), addr) == 0);
  /* A node that needs two members starts once it joined the first. */
  cfg = test_config("c-joiner");
  CHECK(cfg != NULL);
  OK(lbmkv_config_add_seed, cfg, addr);
  OK(lbmkv_config_set_min_members, cfg, 2);
  OK(lbmkv_node_start, cfg, &b);
  lbmkv_config_free(cfg);
  CHECK(member_count(b) == 2);
  lbmkv_node_free(b);
  lbmkv_node_free(a);
  /* The advertised address is the one the node gives, whatever it listens on. */
  cfg = test_config("c-elsewhere");
  CHECK(cfg != NULL);
  OK(lbmkv_config_set_advertise, cfg, "127.0.0.1:1");
  OK(lbmkv_node_start, cfg, &a);
  lbmkv_config_free(cfg);
  CHECK(strcmp(lbmkv_node_address(a), "127.0.0.1:1") == 0);
  lbmkv_node_free(a);
}

static void test_single_node_operations(void) {
  lbmkv_node *node = start_node("c-single");
  lbmkv_table *t = NULL, *t2 = NULL;
  lbmkv_bytes v = {NULL, 0}, old = {NULL, 0}, nw = {NULL, 0}, json = {NULL, 0};
  lbmkv_entries *entries = NULL, *olds = NULL, *news = NULL;
  lbmkv_names *names = NULL;
  bool found = false, old_found = false, new_found = false;
  size_t len = 99;
  int calls = 0;
  CHECK(node != NULL);
  CHECK(strcmp(lbmkv_node_name(node), "c-single") == 0);
  CHECK(strncmp(lbmkv_node_address(node), "127.0.0.1:", 10) == 0);

  OK(lbmkv_table_create, node, "users", NULL, NULL, NULL, &t);
  CHECK(strcmp(lbmkv_table_name(t), "users") == 0);

  /* put, then put over it: the previous value comes back */
  found = true;
  OK(lbmkv_table_put, t, S("alice"), S("admin"), &v, &found);
  CHECK(!found && v.data == NULL && v.len == 0);
  OK(lbmkv_table_put, t, S("alice"), S("owner"), &v, &found);
  CHECK(found && bytes_is(v, "admin"));
  CHECK(v.data[v.len] == '\0'); /* library bytes end with a NUL */
  lbmkv_bytes_free(&v);
  CHECK(v.data == NULL && v.len == 0);
  lbmkv_bytes_free(&v); /* a second free does nothing */
  OK(lbmkv_table_put, t, S("empty"), ((lbmkv_slice){NULL, 0}), NULL, NULL);

  /* get: local, strong, missing, presence only */
  OK(lbmkv_table_get, t, S("alice"), false, &v, &found);
  CHECK(found && bytes_is(v, "owner"));
  lbmkv_bytes_free(&v);
  OK(lbmkv_table_get, t, S("alice"), true, &v, &found);
  CHECK(found && bytes_is(v, "owner"));
  lbmkv_bytes_free(&v);
  OK(lbmkv_table_get, t, S("empty"), false, &v, &found);
  CHECK(found && v.data != NULL && v.len == 0);
  lbmkv_bytes_free(&v);
  OK(lbmkv_table_get, t, S("nobody"), false, &v, &found);
  CHECK(!found && v.data == NULL);
  OK(lbmkv_table_get, t, S("alice"), false, NULL, &found);
  CHECK(found);
  OK(lbmkv_table_contains, t, S("alice"), &found);
  CHECK(found);
  OK(lbmkv_table_contains, t, S("nobody"), &found);
  CHECK(!found);
  OK(lbmkv_table_len, t, &len);
  CHECK(len == 2);

  /* put_many: atomic batch, previous entries of existing keys */
  {
    lbmkv_slice keys[3] = {S("alice"), S("bob"), S("carol")};
    lbmkv_slice values[3] = {S("a2"), S("b1"), S("c1")};
    OK(lbmkv_table_put_many, t, keys, values, 3, &entries);
    CHECK(lbmkv_entries_len(entries) == 1);
    CHECK(slice_is(lbmkv_entries_key(entries, 0), "alice"));
    CHECK(slice_is(lbmkv_entries_value(entries, 0), "owner"));
    CHECK(lbmkv_entries_key(entries, 1).data == NULL);
    CHECK(lbmkv_entries_value(entries, 7).data == NULL);
    lbmkv_entries_free(entries);
    entries = NULL;
    OK(lbmkv_table_put_many, t, keys, values, 0, NULL);
  }

  /* match: globs on keys and values, sorted by key; NULL data = "*" */
  OK(lbmkv_table_match, t, S("*"), ((lbmkv_slice){NULL, 0}), &entries);
  CHECK(lbmkv_entries_len(entries) == 4);
  CHECK(slice_is(lbmkv_entries_key(entries, 0), "alice"));
  CHECK(slice_is(lbmkv_entries_key(entries, 3), "empty"));
  lbmkv_entries_free(entries);
  OK(lbmkv_table_match, t, S("[ab]*"), S("?1"), &entries);
  CHECK(lbmkv_entries_len(entries) == 1);
  CHECK(slice_is(lbmkv_entries_key(entries, 0), "bob"));
  lbmkv_entries_free(entries);
  OK(lbmkv_table_match, t, ((lbmkv_slice){NULL, 0}), S("c*"), &entries);
  CHECK(lbmkv_entries_len(entries) == 1);
  CHECK(slice_is(lbmkv_entries_value(entries, 0), "c1"));
  lbmkv_entries_free(entries);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_match, t, S("[abc"), S("*"), &entries);

  /* delete and delete_many */
  OK(lbmkv_table_delete, t, S("empty"), &v, &found);
  CHECK(found && v.data != NULL && v.len == 0);
  lbmkv_bytes_free(&v);
  OK(lbmkv_table_delete, t, S("empty"), &v, &found);
  CHECK(!found && v.data == NULL);
  {
    lbmkv_slice keys[2] = {S("carol"), S("nobody")};
    OK(lbmkv_table_delete_many, t, keys, 2, &entries);
    CHECK(lbmkv_entries_len(entries) == 1);
    CHECK(slice_is(lbmkv_entries_key(entries, 0), "carol"));
    CHECK(slice_is(lbmkv_entries_value(entries, 0), "c1"));
    lbmkv_entries_free(entries);
  }
  OK(lbmkv_table_len, t, &len);
  CHECK(len == 2);

  /* update: set, keep (writes nothing), delete, abort */
  OK(lbmkv_table_update, t, S("n"), increment, NULL, &old, &old_found, &nw, &new_found);
  CHECK(!old_found && old.data == NULL && new_found && bytes_is(nw, "1"));
  lbmkv_bytes_free(&nw);
  OK(lbmkv_table_update, t, S("n"), increment, NULL, &old, &old_found, &nw, &new_found);
  CHECK(old_found && bytes_is(old, "1") && new_found && bytes_is(nw, "2"));
  lbmkv_bytes_free(&old);
  lbmkv_bytes_free(&nw);
  OK(lbmkv_table_update, t, S("n"), decide_nothing, &calls, &old, &old_found, &nw, &new_found);
  CHECK(calls == 1);
  CHECK(old_found && new_found && bytes_is(old, "2") && bytes_is(nw, "2"));
  lbmkv_bytes_free(&old);
  lbmkv_bytes_free(&nw);
  FAILS(LBMKV_STATUS_ABORTED, lbmkv_table_update, t, S("n"), refuse, NULL, NULL, NULL, NULL,
        NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_update, t, S("n"), NULL, NULL, NULL, NULL,
        NULL, NULL);
  OK(lbmkv_table_get, t, S("n"), false, &v, &found);
  CHECK(found && bytes_is(v, "2"));
  lbmkv_bytes_free(&v);
  OK(lbmkv_table_update, t, S("n"), delete_it, NULL, &old, &old_found, &nw, &new_found);
  CHECK(old_found && bytes_is(old, "2") && !new_found && nw.data == NULL);
  lbmkv_bytes_free(&old);
  OK(lbmkv_table_contains, t, S("n"), &found);
  CHECK(!found);

  /* update_all: all or nothing over the whole table */
  {
    lbmkv_slice keys[3] = {S("u1"), S("d1"), S("k1")};
    lbmkv_slice values[3] = {S("up"), S("gone"), S("kept")};
    OK(lbmkv_table_put_many, t, keys, values, 3, NULL);
  }
  FAILS(LBMKV_STATUS_ABORTED, lbmkv_table_update_all, t, refuse, NULL, &olds, &news);
  CHECK(olds == NULL && news == NULL);
  OK(lbmkv_table_update_all, t, upper_or_delete, NULL, &olds, &news);
  CHECK(lbmkv_entries_len(olds) == 2); /* d1 deleted, u1 changed */
  CHECK(slice_is(lbmkv_entries_key(olds, 0), "d1"));
  CHECK(slice_is(lbmkv_entries_key(olds, 1), "u1"));
  CHECK(slice_is(lbmkv_entries_value(olds, 1), "up"));
  CHECK(lbmkv_entries_len(news) == 1);
  CHECK(slice_is(lbmkv_entries_key(news, 0), "u1"));
  CHECK(slice_is(lbmkv_entries_value(news, 0), "UP"));
  lbmkv_entries_free(olds);
  lbmkv_entries_free(news);
  OK(lbmkv_table_get, t, S("k1"), false, &v, &found);
  CHECK(found && bytes_is(v, "kept"));
  lbmkv_bytes_free(&v);
  OK(lbmkv_table_contains, t, S("d1"), &found);
  CHECK(!found);

  /* node: members, tables, info, existing and missing tables */
  OK(lbmkv_node_members, node, &names);
  CHECK(lbmkv_names_len(names) == 1);
  CHECK(strcmp(lbmkv_names_get(names, 0), "c-single") == 0);
  CHECK(lbmkv_names_get(names, 1) == NULL);
  lbmkv_names_free(names);
  OK(lbmkv_table_create, node, "zeta", NULL, NULL, NULL, &t2);
  lbmkv_table_free(t2);
  OK(lbmkv_node_tables, node, &names);
  CHECK(lbmkv_names_len(names) == 2);
  CHECK(strcmp(lbmkv_names_get(names, 0), "users") == 0);
  CHECK(strcmp(lbmkv_names_get(names, 1), "zeta") == 0);
  lbmkv_names_free(names);
  OK(lbmkv_node_info_json, node, &json);
  CHECK(json.data[json.len] == '\0');
  CHECK(strstr((const char *)json.data, "\"name\":\"c-single\"") != NULL);
  CHECK(strstr((const char *)json.data, "\"members\":[\"c-single\"]") != NULL);
  CHECK(strstr((const char *)json.data, "\"name\":\"users\"") != NULL);
  lbmkv_bytes_free(&json);
  OK(lbmkv_table_conflicts_json, t, &json);
  CHECK(bytes_is(json, "[]"));
  lbmkv_bytes_free(&json);
  t2 = NULL;
  OK(lbmkv_node_table, node, "users", &t2);
  OK(lbmkv_table_get, t2, S("alice"), false, &v, &found);
  CHECK(found && bytes_is(v, "a2"));
  lbmkv_bytes_free(&v);
  lbmkv_table_free(t2);
  t2 = NULL;
  FAILS(LBMKV_STATUS_NO_SUCH_TABLE, lbmkv_node_table, node, "nope", &t2);
  CHECK(t2 == NULL);

  /* close: later calls answer CLOSED; closing twice is fine */
  OK(lbmkv_node_close, node);
  OK(lbmkv_node_close, node);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_put, t, S("k"), S("v"), NULL, NULL);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_get, t, S("alice"), false, &v, &found);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_node_members, node, &names);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_create, node, "late", NULL, NULL, NULL, &t2);
  lbmkv_table_free(t);
  lbmkv_node_free(node);
}

static void test_events_are_pulled(void) {
  lbmkv_node *node = start_node("c-events");
  lbmkv_table *t = NULL;
  lbmkv_event *ev = NULL;
  int saw_created = 0;
  CHECK(node != NULL);
  OK(lbmkv_table_create, node, "evt", NULL, NULL, NULL, &t);
  for (;;) {
    OK(lbmkv_node_next_event, node, 1000, &ev);
    CHECK(ev != NULL);
    if (lbmkv_event_get_type(ev) == LBMKV_EVENT_TYPE_TABLE_CREATED) {
      CHECK(strcmp(lbmkv_event_table(ev), "evt") == 0);
      CHECK(lbmkv_event_node(ev) == NULL);
      CHECK(strstr(lbmkv_event_json(ev), "\"type\":\"table_created\"") != NULL);
      saw_created = 1;
    }
    lbmkv_event_free(ev);
    if (saw_created) break;
  }
  /* nothing queued: OK with no event once the timeout passes */
  ev = (lbmkv_event *)&ev;
  OK(lbmkv_node_next_event, node, 0, &ev);
  CHECK(ev == NULL);
  OK(lbmkv_node_next_event, node, 50, &ev);
  CHECK(ev == NULL);
  /* NULL event accessors */
  CHECK(lbmkv_event_get_type(NULL) == LBMKV_EVENT_TYPE_UNKNOWN);
  CHECK(strcmp(lbmkv_event_json(NULL), "{}") == 0);
  CHECK(lbmkv_event_table(NULL) == NULL);
  lbmkv_event_free(NULL);
  /* a closed node with nothing queued reports CLOSED */
  OK(lbmkv_node_close, node);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_node_next_event, node, 10, &ev);
  lbmkv_table_free(t);
  lbmkv_node_free(node);
}

static void test_bad_input_gives_typed_errors(void) {
  lbmkv_node *node = start_node("c-bad-input");
  lbmkv_table *t = NULL;
  lbmkv_bytes v = {NULL, 0};
  lbmkv_entries *entries = NULL;
  lbmkv_names *names = NULL;
  lbmkv_event *ev = NULL;
  bool found = false;
  size_t len = 0;
  char long_name[300];
  static uint8_t big_key[70 * 1024];
  lbmkv_slice keys[2];
  CHECK(node != NULL);
  memset(long_name, 'x', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';

  /* table names: NULL, empty, too long, invalid UTF-8 */
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_create, node, NULL, NULL, NULL, NULL, &t);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_create, node, "", NULL, NULL, NULL, &t);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_create, node, long_name, NULL, NULL, NULL, &t);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_create, node, "bad\xc3\x28", NULL, NULL, NULL,
        &t);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_table, node, "\xff", &t);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_create, node, "t", NULL, NULL, NULL, NULL);
  CHECK(t == NULL);

  /* NULL handles */
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_create, NULL, "t", NULL, NULL, NULL, &t);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put, NULL, S("k"), S("v"), NULL, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_get, NULL, S("k"), false, &v, &found);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_delete, NULL, S("k"), NULL, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_len, NULL, &len);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_match, NULL, S("*"), S("*"), &entries);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_update, NULL, S("k"), increment, NULL, NULL,
        NULL, NULL, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_update_all, NULL, increment, NULL, NULL, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_set_conflict_handler, NULL, keep_local, NULL,
        NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_conflicts_json, NULL, &v);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_connect, NULL, "127.0.0.1:1");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_disconnect, NULL, "x");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_members, NULL, &names);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_tables, NULL, &names);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_info_json, NULL, &v);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_next_event, NULL, 0, &ev);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_close, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_resolution_set_delete, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_update_set, NULL, S("v"));
  CHECK(lbmkv_node_name(NULL) == NULL);
  CHECK(lbmkv_node_address(NULL) == NULL);
  CHECK(lbmkv_table_name(NULL) == NULL);
  CHECK(lbmkv_error_status(NULL) == LBMKV_STATUS_INVALID_ARGUMENT);
  CHECK(strcmp(lbmkv_error_message(NULL), "") == 0);
  CHECK(lbmkv_entries_len(NULL) == 0);
  CHECK(lbmkv_entries_key(NULL, 0).data == NULL);
  CHECK(lbmkv_names_len(NULL) == 0);
  CHECK(lbmkv_names_get(NULL, 0) == NULL);
  CHECK(lbmkv_conflict_key(NULL).data == NULL);
  CHECK(!lbmkv_conflict_local(NULL, NULL));

  OK(lbmkv_table_create, node, "t", NULL, NULL, NULL, &t);

  /* NULL outputs that are required */
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_get, t, S("k"), false, &v, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_len, t, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_match, t, S("*"), S("*"), NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_members, node, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_next_event, node, 0, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_start, NULL, NULL);

  /* NULL data with a nonzero length, in keys, values and arrays */
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put, t, ((lbmkv_slice){NULL, 3}), S("v"), NULL,
        NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put, t, S("k"), ((lbmkv_slice){NULL, 1}), NULL,
        NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_get, t, ((lbmkv_slice){NULL, 8}), false, &v,
        &found);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_delete, t, ((lbmkv_slice){NULL, 2}), NULL,
        NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put_many, t, NULL, NULL, 2, NULL);
  keys[0] = S("a");
  keys[1] = (lbmkv_slice){NULL, 5};
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put_many, t, keys, keys, 2, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_delete_many, t, keys, 2, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_match, t, ((lbmkv_slice){NULL, 1}), S("*"),
        &entries);

  /* oversize key */
  memset(big_key, 'k', sizeof big_key);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_put, t,
        ((lbmkv_slice){big_key, sizeof big_key}), S("v"), NULL, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_get, t,
        ((lbmkv_slice){big_key, sizeof big_key}), false, &v, &found);

  /* bad addresses and names */
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_connect, node, "not an address");
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_connect, node, NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_disconnect, node, "\xfe");

  /* nothing was written by the failed calls */
  OK(lbmkv_table_len, t, &len);
  CHECK(len == 0);
  CHECK(v.data == NULL && entries == NULL && names == NULL && ev == NULL);

  /* every _free accepts NULL */
  lbmkv_bytes_free(NULL);
  lbmkv_entries_free(NULL);
  lbmkv_names_free(NULL);
  lbmkv_error_free(NULL);
  lbmkv_event_free(NULL);
  lbmkv_table_free(NULL);
  lbmkv_node_free(NULL);
  lbmkv_config_free(NULL);

  lbmkv_table_free(t);
  lbmkv_node_free(node);
}

static void test_table_outlives_its_node_and_answers_closed(void) {
  free_counter fc = {PTHREAD_MUTEX_INITIALIZER, 0};
  lbmkv_node *node = start_node("c-orphan");
  lbmkv_table *t = NULL;
  lbmkv_bytes v = {NULL, 0};
  lbmkv_entries *entries = NULL;
  bool found = false;
  size_t len = 0;
  CHECK(node != NULL);
  OK(lbmkv_table_create, node, "orphan", keep_local, &fc, count_free, &t);
  OK(lbmkv_table_put, t, S("k"), S("v"), NULL, NULL);
  lbmkv_node_free(node);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_put, t, S("k"), S("w"), NULL, NULL);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_get, t, S("k"), false, &v, &found);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_get, t, S("k"), true, &v, &found);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_len, t, &len);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_match, t, S("*"), S("*"), &entries);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_update, t, S("k"), increment, NULL, NULL, NULL, NULL,
        NULL);
  FAILS(LBMKV_STATUS_CLOSED, lbmkv_table_set_conflict_handler, t, NULL, NULL, NULL);
  CHECK(v.data == NULL && entries == NULL);
  CHECK(strcmp(lbmkv_table_name(t), "orphan") == 0);
  lbmkv_table_free(t);
  /* the handler's user data is finalized exactly once when the last
   * reference to the table goes */
  CHECK(wait_until(freed_once, &fc, 10000));
  sleep_ms(100);
  CHECK(frees_of(&fc) == 1);
}

static void test_user_data_free_runs_exactly_once(void) {
  free_counter a = {PTHREAD_MUTEX_INITIALIZER, 0};
  free_counter b = {PTHREAD_MUTEX_INITIALIZER, 0};
  free_counter c = {PTHREAD_MUTEX_INITIALIZER, 0};
  free_counter d = {PTHREAD_MUTEX_INITIALIZER, 0};
  lbmkv_node *node = start_node("c-user-data");
  lbmkv_table *t = NULL;
  CHECK(node != NULL);
  OK(lbmkv_table_create, node, "h", keep_local, &a, count_free, &t);
  CHECK(frees_of(&a) == 0);
  /* replacing a handler drops the old one */
  OK(lbmkv_table_set_conflict_handler, t, keep_local, &b, count_free);
  CHECK(frees_of(&a) == 1);
  /* NULL fn removes the handler; its own user data is finalized at once */
  OK(lbmkv_table_set_conflict_handler, t, NULL, &c, count_free);
  CHECK(frees_of(&b) == 1);
  CHECK(frees_of(&c) == 1);
  /* a failing registration still finalizes */
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_table_create, node, "", keep_local, &d, count_free,
        &t);
  CHECK(frees_of(&d) == 2); /* FAILS calls twice */
  lbmkv_table_free(t);
  lbmkv_node_free(node);
  CHECK(frees_of(&a) == 1 && frees_of(&b) == 1 && frees_of(&c) == 1);
}

/* ---------------------------------------------------- cluster and handler */

typedef struct {
  free_counter freed; /* first: count_free frees the user data */
  pthread_mutex_t lock;
  int calls;
  int frees;
  lbmkv_status blocking_status; /* of a blocking call made inside the handler */
  const lbmkv_table *table;     /* the table on the handler's node */
} handler_state;

/* Resolves to "max(local, remote)+merged" and checks that a blocking call
 * from inside is refused. */
static bool merge_handler(void *user_data, const lbmkv_conflict *c, lbmkv_resolution *out) {
  handler_state *st = (handler_state *)user_data;
  lbmkv_slice local = {NULL, 0}, remote = {NULL, 0}, best;
  char buf[128];
  lbmkv_status blocking;
  const lbmkv_table *table;
  bool has_local = lbmkv_conflict_local(c, &local);
  bool has_remote = lbmkv_conflict_remote(c, &remote);
  if (!slice_is(lbmkv_conflict_table(c), "shared") || !slice_is(lbmkv_conflict_key(c), "k"))
    return false;
  if (!has_local && !has_remote) return false;
  best = !has_remote ? local
         : !has_local ? remote
         : (memcmp(local.data, remote.data, local.len < remote.len ? local.len : remote.len) >= 0
                ? local
                : remote);
  if (best.len + 8 > sizeof buf) return false;
  memcpy(buf, best.data, best.len);
  memcpy(buf + best.len, "+merged", 7);
  pthread_mutex_lock(&st->lock);
  table = st->table;
  pthread_mutex_unlock(&st->lock);
  blocking = lbmkv_table_put(table, S("from-handler"), S("x"), NULL, NULL, NULL);
  pthread_mutex_lock(&st->lock);
  st->calls++;
  st->blocking_status = blocking;
  pthread_mutex_unlock(&st->lock);
  return lbmkv_resolution_set_value(out, (lbmkv_slice){(const uint8_t *)buf, best.len + 7},
                                    NULL) == LBMKV_STATUS_OK;
}

static void handler_state_free(void *user_data) {
  handler_state *st = (handler_state *)user_data;
  pthread_mutex_lock(&st->lock);
  st->frees++;
  pthread_mutex_unlock(&st->lock);
}

typedef struct {
  lbmkv_node *a, *b;
  const lbmkv_table *ta, *tb;
} pair;

static int both_see_two(void *arg) {
  pair *p = (pair *)arg;
  return member_count(p->a) == 2 && member_count(p->b) == 2;
}

static int both_alone(void *arg) {
  pair *p = (pair *)arg;
  return member_count(p->a) == 1 && member_count(p->b) == 1;
}

static int b_has_table(void *arg) {
  pair *p = (pair *)arg;
  lbmkv_names *names = NULL;
  int has = 0;
  size_t i;
  if (lbmkv_node_tables(p->b, &names, NULL) != LBMKV_STATUS_OK) return 0;
  for (i = 0; i < lbmkv_names_len(names); i++)
    if (strcmp(lbmkv_names_get(names, i), "shared") == 0) has = 1;
  lbmkv_names_free(names);
  return has;
}

static int value_is(const lbmkv_table *t, const char *want) {
  lbmkv_bytes v = {NULL, 0};
  bool found = false;
  int same;
  if (lbmkv_table_get(t, S("k"), false, &v, &found, NULL) != LBMKV_STATUS_OK || !found) return 0;
  same = bytes_is(v, want);
  lbmkv_bytes_free(&v);
  return same;
}

static int both_have_handler_value(void *arg) {
  pair *p = (pair *)arg;
  return value_is(p->ta, "B+merged") && value_is(p->tb, "B+merged");
}

static int handler_freed(void *arg) {
  handler_state *st = (handler_state *)arg;
  int n;
  pthread_mutex_lock(&st->lock);
  n = st->frees;
  pthread_mutex_unlock(&st->lock);
  return n == 1;
}

/* Pulls events from `node` until one of `type` arrives (or `limit_ms`). */
static lbmkv_event *event_of_type(lbmkv_node *node, lbmkv_event_type type, long limit_ms) {
  double deadline = now_ms() + (double)limit_ms;
  while (now_ms() < deadline) {
    lbmkv_event *ev = NULL;
    if (lbmkv_node_next_event(node, 100, &ev, NULL) != LBMKV_STATUS_OK) return NULL;
    if (ev != NULL && lbmkv_event_get_type(ev) == type) return ev;
    lbmkv_event_free(ev);
  }
  return NULL;
}

/* Drops every event queued on `node`. */
static void drain_events(lbmkv_node *node) {
  lbmkv_event *ev = NULL;
  while (lbmkv_node_next_event(node, 0, &ev, NULL) == LBMKV_STATUS_OK && ev != NULL)
    lbmkv_event_free(ev);
}

static void test_split_and_heal_resolved_by_a_c_handler(void) {
  handler_state st;
  pair p;
  lbmkv_table *ta = NULL, *tb = NULL;
  lbmkv_event *ev = NULL;
  lbmkv_bytes log = {NULL, 0};
  int calls, frees;
  lbmkv_status blocking, first;
  memset(&st, 0, sizeof st);
  pthread_mutex_init(&st.lock, NULL);
  st.blocking_status = LBMKV_STATUS_OK;
  p.a = start_node("c-n1");
  p.b = start_node("c-n2");
  CHECK(p.a != NULL && p.b != NULL);

  OK(lbmkv_node_connect, p.b, lbmkv_node_address(p.a));
  CHECK(wait_until(both_see_two, &p, 10000));
  ev = event_of_type(p.a, LBMKV_EVENT_TYPE_NODE_UP, 5000);
  CHECK(ev != NULL && strcmp(lbmkv_event_node(ev), "c-n2") == 0);
  lbmkv_event_free(ev);

  OK(lbmkv_table_create, p.a, "shared", merge_handler, &st, handler_state_free, &ta);
  pthread_mutex_lock(&st.lock);
  st.table = ta;
  pthread_mutex_unlock(&st.lock);
  CHECK(wait_until(b_has_table, &p, 10000));
  OK(lbmkv_node_table, p.b, "shared", &tb);
  p.ta = ta;
  p.tb = tb;

  /* split: each side refuses the other */
  OK(lbmkv_node_disconnect, p.a, "c-n2");
  OK(lbmkv_node_disconnect, p.b, "c-n1");
  CHECK(wait_until(both_alone, &p, 10000));
  ev = event_of_type(p.a, LBMKV_EVENT_TYPE_NODE_DOWN, 5000);
  CHECK(ev != NULL && strcmp(lbmkv_event_node(ev), "c-n2") == 0);
  lbmkv_event_free(ev);

  /* concurrent writes on both sides */
  OK(lbmkv_table_put, ta, S("k"), S("A"), NULL, NULL);
  OK(lbmkv_table_put, tb, S("k"), S("B"), NULL, NULL);
  CHECK(value_is(ta, "A") && value_is(tb, "B"));

  drain_events(p.b);

  /* heal: the first connect lifts a's refusal but is refused by b, which
   * still refuses a; the second lifts b's and goes through */
  first = lbmkv_node_connect(p.a, lbmkv_node_address(p.b), NULL);
  CHECK(first != LBMKV_STATUS_OK);
  OK(lbmkv_node_connect, p.b, lbmkv_node_address(p.a));
  CHECK(wait_until(both_see_two, &p, 10000));
  CHECK(wait_until(both_have_handler_value, &p, 15000));

  pthread_mutex_lock(&st.lock);
  calls = st.calls;
  blocking = st.blocking_status;
  pthread_mutex_unlock(&st.lock);
  CHECK(calls >= 1);
  CHECK(blocking == LBMKV_STATUS_WOULD_DEADLOCK);

  /* the handler's node reports the conflict it settled */
  ev = event_of_type(p.a, LBMKV_EVENT_TYPE_CONFLICT, 5000);
  CHECK(ev != NULL);
  CHECK(strcmp(lbmkv_event_table(ev), "shared") == 0);
  CHECK(strstr(lbmkv_event_json(ev), "\"resolution\":\"handler\"") != NULL);
  lbmkv_event_free(ev);
  /* the other side reports the merge of the heal */
  ev = event_of_type(p.b, LBMKV_EVENT_TYPE_MERGED, 5000);
  CHECK(ev != NULL);
  CHECK(strcmp(lbmkv_event_table(ev), "shared") == 0);
  CHECK(strcmp(lbmkv_event_node(ev), "c-n1") == 0);
  CHECK(strstr(lbmkv_event_json(ev), "\"type\":\"merged\"") != NULL);
  lbmkv_event_free(ev);
  OK(lbmkv_table_conflicts_json, ta, &log);
  CHECK(log.len >= 2);
  lbmkv_bytes_free(&log);

  lbmkv_table_free(tb);
  lbmkv_node_free(p.b);
  lbmkv_table_free(ta);
  lbmkv_node_free(p.a);
  CHECK(wait_until(handler_freed, &st, 10000));
  pthread_mutex_lock(&st.lock);
  frees = st.frees;
  pthread_mutex_unlock(&st.lock);
  CHECK(frees == 1);
}

/* ------------------------------------------------------ watches and ttls */

/* The next change of `w` (NULL when none came within `limit_ms`). */
static lbmkv_change *next_change(const lbmkv_watch *w, uint32_t limit_ms) {
  lbmkv_change *c = NULL;
  if (lbmkv_watch_next(w, limit_ms, &c, NULL) != LBMKV_STATUS_OK) return NULL;
  return c;
}

/* Takes changes until one of `key` with `cause` (10 s at most); 1 if found. */
static int change_seen(const lbmkv_watch *w, const char *key, lbmkv_change_cause cause) {
  double deadline = now_ms() + 10000.0;
  while (now_ms() < deadline) {
    lbmkv_change *c = next_change(w, 200);
    int hit;
    if (c == NULL) continue;
    hit = slice_is(lbmkv_change_key(c), key) && lbmkv_change_get_cause(c) == cause;
    lbmkv_change_free(c);
    if (hit) return 1;
  }
  return 0;
}

static void test_watches_and_expiring_keys(void) {
  pair p;
  lbmkv_table *ta = NULL, *tb = NULL;
  lbmkv_watch *wa = NULL, *wb = NULL, *slow = NULL;
  lbmkv_change *c = NULL;
  lbmkv_slice v = {NULL, 0};
  uint64_t left = 0, lagged = 0;
  bool found = true;
  int i, changes = 0;
  p.a = start_node("c-w1");
  p.b = start_node("c-w2");
  CHECK(p.a != NULL && p.b != NULL);
  OK(lbmkv_node_connect, p.b, lbmkv_node_address(p.a));
  CHECK(wait_until(both_see_two, &p, 10000));
  OK(lbmkv_table_create, p.a, "w", NULL, NULL, NULL, &ta);
  OK(lbmkv_table_create, p.b, "w", NULL, NULL, NULL, &tb);
  OK(lbmkv_table_watch, ta, NULL, 0, 0, &wa);
  OK(lbmkv_table_watch, tb, (const uint8_t *)"k", 1, 0, &wb);
  CHECK(lbmkv_watch_next(wb, 10, &c, NULL) == LBMKV_STATUS_TIMEOUT && c == NULL);

  /* a write from b: the sequencer (a) executed it, b applied it */
  OK(lbmkv_table_put, tb, S("k1"), S("v1"), NULL, NULL);
  OK(lbmkv_table_put, tb, S("other"), S("x"), NULL, NULL);
  OK(lbmkv_table_delete, ta, S("k1"), NULL, NULL);
  c = next_change(wa, 5000);
  CHECK(c != NULL && slice_is(lbmkv_change_key(c), "k1"));
  CHECK(lbmkv_change_get_cause(c) == LBMKV_CHANGE_CAUSE_WRITE);
  CHECK(strcmp(lbmkv_change_cause_name(c), "write") == 0);
  CHECK(lbmkv_change_value(c, &v) && slice_is(v, "v1"));
  CHECK(!lbmkv_change_prev(c, &v) && v.data == NULL);
  CHECK(strcmp(lbmkv_change_table(c), "w") == 0 && strcmp(lbmkv_change_node(c), "c-w1") == 0);
  lbmkv_change_free(c);
  c = next_change(wb, 5000);
  CHECK(c != NULL && slice_is(lbmkv_change_key(c), "k1"));
  CHECK(lbmkv_change_get_cause(c) == LBMKV_CHANGE_CAUSE_REPLICATED);
  lbmkv_change_free(c);
  c = next_change(wb, 5000); /* "other" is not under the prefix */
  CHECK(c != NULL && slice_is(lbmkv_change_key(c), "k1") && !lbmkv_change_value(c, NULL));
  CHECK(lbmkv_change_prev(c, &v) && slice_is(v, "v1"));
  lbmkv_change_free(c);

  /* an expiring key: ttl reported, then deleted everywhere with the cause expiry */
  OK(lbmkv_table_put_ttl, tb, S("k-exp"), S("soon"), 300, NULL, NULL);
  OK(lbmkv_table_ttl, ta, S("k-exp"), &left, &found);
  CHECK(found && left > 0 && left <= 300);
  OK(lbmkv_table_ttl, ta, S("absent"), &left, &found);
  CHECK(!found && left == 0);
  CHECK(change_seen(wb, "k-exp", LBMKV_CHANGE_CAUSE_EXPIRY));
  CHECK(!value_is(tb, "soon"));

  /* a split: a write on a's side reaches b by the merge of the heal */
  OK(lbmkv_node_disconnect, p.a, "c-w2");
  OK(lbmkv_node_disconnect, p.b, "c-w1");
  CHECK(wait_until(both_alone, &p, 10000));
  OK(lbmkv_table_put, ta, S("k-split"), S("a"), NULL, NULL);
  (void)lbmkv_node_connect(p.a, lbmkv_node_address(p.b), NULL);
  OK(lbmkv_node_connect, p.b, lbmkv_node_address(p.a));
  CHECK(wait_until(both_see_two, &p, 10000));
  CHECK(change_seen(wb, "k-split", LBMKV_CHANGE_CAUSE_MERGE));

  /* a slow consumer learns how many changes it missed */
  OK(lbmkv_table_watch, ta, (const uint8_t *)"s", 1, 2, &slow);
  for (i = 0; i < 5; i++) {
    char key[8];
    lbmkv_slice k;
    snprintf(key, sizeof key, "s%d", i);
    k.data = (const uint8_t *)key;
    k.len = strlen(key);
    OK(lbmkv_table_put, ta, k, S("v"), NULL, NULL);
  }
  while ((c = next_change(slow, 500)) != NULL) {
    if (lbmkv_change_lagged(c) > 0) {
      lagged += lbmkv_change_lagged(c);
      CHECK(lbmkv_change_get_cause(c) == LBMKV_CHANGE_CAUSE_UNKNOWN);
    } else {
      changes++;
    }
    lbmkv_change_free(c);
  }
  CHECK(changes == 2 && lagged == 3);

  /* closing ends the watch; closing the node ends the others */
  lbmkv_watch_close(slow);
  CHECK(lbmkv_watch_next(slow, 10, &c, NULL) == LBMKV_STATUS_CLOSED);
  lbmkv_watch_free(slow);
  OK(lbmkv_node_close, p.a);
  while (lbmkv_watch_next(wa, 1000, &c, NULL) == LBMKV_STATUS_OK) lbmkv_change_free(c);
  CHECK(lbmkv_watch_next(wa, 10, &c, NULL) == LBMKV_STATUS_CLOSED);
  lbmkv_watch_free(wa);
  lbmkv_watch_free(wb);
  lbmkv_watch_free(NULL);
  lbmkv_change_free(NULL);
  lbmkv_table_free(tb);
  lbmkv_table_free(ta);
  lbmkv_node_free(p.b);
  lbmkv_node_free(p.a);
}

/* ------------------------------------------------------- threads at once */

typedef struct {
  const lbmkv_table *t;
  int n;
  int failures;
} worker_arg;

static void *worker(void *arg) {
  worker_arg *w = (worker_arg *)arg;
  int i;
  for (i = 0; i < w->n; i++) {
    bool found;
    lbmkv_bytes v = {NULL, 0};
    if (lbmkv_table_update(w->t, S("hits"), increment, NULL, NULL, NULL, NULL, NULL, NULL) !=
        LBMKV_STATUS_OK)
      w->failures++;
    if (lbmkv_table_get(w->t, S("hits"), false, &v, &found, NULL) != LBMKV_STATUS_OK || !found)
      w->failures++;
    lbmkv_bytes_free(&v);
  }
  return NULL;
}

static void test_handles_are_shared_between_threads(void) {
  lbmkv_node *node = start_node("c-threads");
  lbmkv_table *t = NULL;
  pthread_t th[4];
  worker_arg args[4];
  int i;
  lbmkv_bytes v = {NULL, 0};
  bool found = false;
  CHECK(node != NULL);
  OK(lbmkv_table_create, node, "hits", NULL, NULL, NULL, &t);
  for (i = 0; i < 4; i++) {
    args[i].t = t;
    args[i].n = 25;
    args[i].failures = 0;
    CHECK(pthread_create(&th[i], NULL, worker, &args[i]) == 0);
  }
  for (i = 0; i < 4; i++) pthread_join(th[i], NULL);
  for (i = 0; i < 4; i++) CHECK(args[i].failures == 0);
  OK(lbmkv_table_get, t, S("hits"), true, &v, &found);
  CHECK(found && bytes_is(v, "100"));
  lbmkv_bytes_free(&v);
  lbmkv_table_free(t);
  lbmkv_node_free(node);
}

/* A dial failure of the engine reaches the log callback at debug level; the
 * callback's user data is freed once when it is replaced. */
static void test_engine_logs_reach_the_log_callback(void) {
  static log_seen seen = {{PTHREAD_MUTEX_INITIALIZER, 0}, PTHREAD_MUTEX_INITIALIZER, 0, 0,
                          LBMKV_LOG_LEVEL_OFF, ""};
  lbmkv_config *cfg = test_config("c-logs");
  lbmkv_node *node = NULL;
  lbmkv_log_level level;
  char target[64];
  int calls, after;
  CHECK(cfg != NULL);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_log_set_callback, 6, on_log, &seen, NULL);
  OK(lbmkv_log_set_callback, LBMKV_LOG_LEVEL_DEBUG, on_log, &seen, count_free);
  /* Nobody listens on port 1: every dial of the seed fails. */
  OK(lbmkv_config_add_seed, cfg, "127.0.0.1:1");
  OK(lbmkv_node_start, cfg, &node);
  lbmkv_config_free(cfg);
  CHECK(wait_until(saw_dial_failure, &seen, 10000));
  pthread_mutex_lock(&seen.lock);
  level = seen.dial_failure_level;
  snprintf(target, sizeof target, "%s", seen.target);
  pthread_mutex_unlock(&seen.lock);
  CHECK(level == LBMKV_LOG_LEVEL_DEBUG);
  CHECK(strcmp(target, "lbmkv::cluster::membership") == 0);
  /* Removing the callback frees its user data at once and ends the calls. */
  CHECK(frees_of(&seen.freed) == 0);
  OK(lbmkv_log_set_callback, LBMKV_LOG_LEVEL_OFF, NULL, NULL, NULL);
  CHECK(frees_of(&seen.freed) == 1);
  pthread_mutex_lock(&seen.lock);
  calls = seen.calls;
  pthread_mutex_unlock(&seen.lock);
  lbmkv_node_free(node);
  pthread_mutex_lock(&seen.lock);
  after = seen.calls;
  pthread_mutex_unlock(&seen.lock);
  CHECK(after == calls);
}

/* Mutual TLS: two nodes with certificates of one CA (written by `lbmkv certs`
 * into $LBMKV_TEST_CERTS, which `make test-c` sets) replicate a put; a path
 * that does not exist fails the start naming the file. */
static void test_two_tls_nodes_replicate_a_put(void) {
  const char *dir = getenv("LBMKV_TEST_CERTS");
  char cert[512], key[512], ca[512];
  lbmkv_config *cfg;
  lbmkv_node *a = NULL, *b = NULL;
  lbmkv_table *ta = NULL, *tb = NULL;
  lbmkv_error *err = NULL;
  lbmkv_bytes v;
  bool found = false;
  if (dir == NULL) {
    FAIL_AT("LBMKV_TEST_CERTS is not set: run `lbmkv certs --out DIR --names "
            "c-tls-a,c-tls-b` and set it to DIR (make test-c does)");
    return;
  }
  snprintf(ca, sizeof ca, "%s/ca.pem", dir);
  cfg = test_config("c-tls-a");
  CHECK(cfg != NULL);
  snprintf(cert, sizeof cert, "%s/c-tls-a.pem", dir);
  snprintf(key, sizeof key, "%s/c-tls-a.key", dir);
  OK(lbmkv_config_set_tls, cfg, cert, key, ca);
  OK(lbmkv_node_start, cfg, &a);
  lbmkv_config_free(cfg);
  cfg = test_config("c-tls-b");
  CHECK(cfg != NULL);
  snprintf(cert, sizeof cert, "%s/c-tls-b.pem", dir);
  snprintf(key, sizeof key, "%s/c-tls-b.key", dir);
  OK(lbmkv_config_set_tls, cfg, cert, key, ca);
  OK(lbmkv_config_add_seed, cfg, lbmkv_node_address(a));
  OK(lbmkv_config_set_min_members, cfg, 2);
  OK(lbmkv_node_start, cfg, &b);
  lbmkv_config_free(cfg);
  CHECK(member_count(a) == 2 && member_count(b) == 2);
  OK(lbmkv_table_create, b, "tls", NULL, NULL, NULL, &tb);
  OK(lbmkv_table_put, tb, S("k"), S("over tls"), NULL, NULL);
  OK(lbmkv_table_create, a, "tls", NULL, NULL, NULL, &ta);
  OK(lbmkv_table_get, ta, S("k"), false, &v, &found);
  CHECK(found && v.len == 8 && memcmp(v.data, "over tls", 8) == 0);
  lbmkv_bytes_free(&v);
  lbmkv_table_free(ta);
  lbmkv_table_free(tb);
  lbmkv_node_free(b);
  lbmkv_node_free(a);
  /* A missing file: INVALID_ARGUMENT naming it. */
  cfg = test_config("c-tls-missing");
  CHECK(cfg != NULL);
  OK(lbmkv_config_set_tls, cfg, "/nonexistent/c-tls.pem", key, ca);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_node_start, cfg, &a);
  CHECK(lbmkv_node_start(cfg, &a, &err) == LBMKV_STATUS_INVALID_ARGUMENT);
  lbmkv_config_free(cfg);
  if (strstr(lbmkv_error_message(err), "/nonexistent/c-tls.pem") == NULL) {
    FAIL_AT("the message does not name the file: %s", lbmkv_error_message(err));
  }
  lbmkv_error_free(err);
  FAILS(LBMKV_STATUS_INVALID_ARGUMENT, lbmkv_config_set_tls, NULL, cert, key, ca);
}

int main(void) {
  RUN(test_version_and_status_names);
  RUN(test_config_setters_check_their_input);
  RUN(test_every_config_setter_takes_effect);
  RUN(test_node_start_rejects_an_unusable_config);
  RUN(test_min_members_fails_naming_the_seed);
  RUN(test_advertised_node_is_joined_with_min_members);
  RUN(test_two_tls_nodes_replicate_a_put);
  RUN(test_single_node_operations);
  RUN(test_events_are_pulled);
  RUN(test_bad_input_gives_typed_errors);
  RUN(test_user_data_free_runs_exactly_once);
  RUN(test_split_and_heal_resolved_by_a_c_handler);
  RUN(test_watches_and_expiring_keys);
  RUN(test_handles_are_shared_between_threads);
  RUN(test_engine_logs_reach_the_log_callback);
  /* Last: it waits until lbmkv has dropped everything of its node (the
   * handler's user data is finalized), so that valgrind's leak check at exit
   * does not race with lbmkv's threads tearing down the last closed node. */
  RUN(test_table_outlives_its_node_and_answers_closed);
  return harness_summary();
}
