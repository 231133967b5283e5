/* A minimal TensorFlow Lite external delegate for edgert's tests.
 *
 * It implements the plugin interface that load_delegate() uses
 * (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate). Its Prepare
 * looks at the execution plan and claims no node, so the CPU kernels run the
 * whole model: results must equal the CPU backend's exactly.
 *
 * Build variants (the tests compile them with the machine's C compiler):
 *   (default)                 passthrough delegate
 *   -DEDGERT_FAIL_CREATE      create reports an error and returns NULL
 *   -DEDGERT_ABORT_CREATE     create calls abort()
 *   -DEDGERT_FAKE_EDGETPU     behaves like libedgetpu's plugin for device
 *                             selection: only the devices listed in
 *                             $FAKE_EDGETPU_DEVICES ("usb:0,pci:0") exist, the
 *                             "device" option picks one, no match -> NULL (as
 *                             the real library does); exports edgetpu_version()
 *   -DEDGERT_FAKE_EDGETPU_LIST  additionally exports edgetpu_list_devices() /
 *                             edgetpu_free_devices() (libedgetpu's C API)
 *
 * Options (key=value, from load_delegate(path, options)):
 *   log=PATH        append one line per event ("pid=N create k=v ...",
 *                   "pid=N prepare nodes=N tensors=N", "pid=N destroy")
 *   crash=segv|abort, crash_at=create|prepare (default prepare)
 *   prepare=error   Prepare returns kTfLiteError (interpreter creation fails)
 *   hang_ms=N       create sleeps N ms first (a device that never answers)
 * The fake Edge TPU reads $FAKE_EDGETPU_LOG, $FAKE_EDGETPU_FAIL
 * (version|segv|abort, at Prepare) and $FAKE_EDGETPU_VERSION instead.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tflite_delegate_min.h"

typedef struct {
  char log[1024];
  char crash[16];
  char crash_at[16];
  int prepare_error;
  long hang_ms;
  char device[64];
} Settings;

static void log_line(const Settings* s, const char* fmt, ...) {
  if (!s->log[0]) return;
  FILE* f = fopen(s->log, "a");
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(f, "pid=%ld ", (long)getpid());
  vfprintf(f, fmt, ap);
  fputc('\n', f);
  va_end(ap);
  fclose(f);
}

static void maybe_crash(const Settings* s, const char* where) {
  if (!s->crash[0]) return;
  const char* at = s->crash_at[0] ? s->crash_at : "prepare";
  if (strcmp(at, where) != 0) return;
  if (strcmp(s->crash, "abort") == 0) abort();
  if (strcmp(s->crash, "segv") == 0) {
    volatile int* p = NULL;
    *p = 42; /* a real invalid access, not raise(): what a broken delegate does */
    raise(SIGSEGV);
  }
}

static TfLiteStatus Prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
  const Settings* s = (const Settings*)delegate->data_;
  TfLiteIntArray* plan = NULL;
  long nodes = -1;
  if (context->GetExecutionPlan(context, &plan) == kTfLiteOk && plan) nodes = plan->size;
  log_line(s, "prepare nodes=%ld tensors=%ld", nodes, (long)context->tensors_size);
  maybe_crash(s, "prepare");
#ifdef EDGERT_FAKE_EDGETPU
  const char* fail = getenv("FAKE_EDGETPU_FAIL");
  if (fail && strcmp(fail, "version") == 0) {
    fprintf(stderr, "ERROR: Failed to prepare for TPU. Package requires runtime version (14), "
                    "which is newer than this runtime version (13).\n");
    return kTfLiteError;
  }
#endif
  /* Claim no node: every op stays with the CPU kernels. A real delegate would
   * call context->ReplaceNodeSubsetsWithDelegateKernels(...) here. */
  return s->prepare_error ? kTfLiteError : kTfLiteOk;
}

static void copy_opt(char* dst, size_t cap, const char* v) {
  strncpy(dst, v, cap - 1);
  dst[cap - 1] = 0;
}

#ifdef EDGERT_FAKE_EDGETPU
/* Does `want` ("", "usb", "pci", "usb:N", "pci:N", ":N") name one of the
 * comma-separated devices in $FAKE_EDGETPU_DEVICES? Indices count per type, in
 * list order, as libedgetpu's enumeration does. */
static int fake_device_exists(const char* want) {
  const char* env = getenv("FAKE_EDGETPU_DEVICES");
  if (!env || !*env) return 0;
  char buf[512];
  copy_opt(buf, sizeof buf, env);
  int n_usb = 0, n_pci = 0, n_all = 0;
  char* save = NULL;
  for (char* tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    int is_usb = strncmp(tok, "usb", 3) == 0;
    int idx_type = is_usb ? n_usb++ : n_pci++;
    int idx_all = n_all++;
    char name[32];
    if (!want || !*want) return 1;
    if (strcmp(want, is_usb ? "usb" : "pci") == 0) return 1;
    snprintf(name, sizeof name, "%s:%d", is_usb ? "usb" : "pci", idx_type);
    if (strcmp(want, name) == 0) return 1;
    snprintf(name, sizeof name, ":%d", idx_all);
    if (strcmp(want, name) == 0) return 1;
  }
  return 0;
}

EDGERT_PLUGIN_EXPORT const char* edgetpu_version(void) {
  const char* v = getenv("FAKE_EDGETPU_VERSION");
  return v ? v : "BuildLabel(fake edgetpu for edgert tests), RuntimeVersion(14)";
}
#endif

#ifdef EDGERT_FAKE_EDGETPU_LIST
struct edgetpu_device {
  int type; /* EDGETPU_APEX_PCI = 0, EDGETPU_APEX_USB = 1 */
  const char* path;
};

EDGERT_PLUGIN_EXPORT struct edgetpu_device* edgetpu_list_devices(size_t* num_devices) {
  static struct edgetpu_device devs[16];
  static char paths[16][32];
  const char* env = getenv("FAKE_EDGETPU_DEVICES");
  char buf[512];
  size_t n = 0;
  copy_opt(buf, sizeof buf, env ? env : "");
  char* save = NULL;
  for (char* tok = strtok_r(buf, ",", &save); tok && n < 16; tok = strtok_r(NULL, ",", &save)) {
    int is_usb = strncmp(tok, "usb", 3) == 0;
    snprintf(paths[n], sizeof paths[n], is_usb ? "/sys/bus/usb/devices/fake%zu" : "/dev/apex_%zu", n);
    devs[n].type = is_usb ? 1 : 0;
    devs[n].path = paths[n];
    n++;
  }
  *num_devices = n;
  return devs;
}

EDGERT_PLUGIN_EXPORT void edgetpu_free_devices(struct edgetpu_device* dev) { (void)dev; }
#endif

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t num_options,
                                              TfLitePluginErrorHandler report_error) {
  /* Some bindings pass the count as a C int: use the low 32 bits only. */
  size_t n = (size_t)(unsigned int)num_options;
  Settings* s = (Settings*)calloc(1, sizeof(Settings));
  if (!s) return NULL;
  char line[2048] = "create";
  for (size_t i = 0; i < n; i++) {
    const char* k = keys[i];
    const char* v = values[i];
    if (strcmp(k, "log") == 0) copy_opt(s->log, sizeof s->log, v);
    else if (strcmp(k, "crash") == 0) copy_opt(s->crash, sizeof s->crash, v);
    else if (strcmp(k, "crash_at") == 0) copy_opt(s->crash_at, sizeof s->crash_at, v);
    else if (strcmp(k, "prepare") == 0) s->prepare_error = strcmp(v, "error") == 0;
    else if (strcmp(k, "device") == 0) copy_opt(s->device, sizeof s->device, v);
    else if (strcmp(k, "hang_ms") == 0) s->hang_ms = atol(v);
    size_t used = strlen(line);
    snprintf(line + used, sizeof line - used, " %s=%s", k, v);
  }
#ifdef EDGERT_FAKE_EDGETPU
  {
    const char* lg = getenv("FAKE_EDGETPU_LOG");
    if (lg) copy_opt(s->log, sizeof s->log, lg);
    const char* fail = getenv("FAKE_EDGETPU_FAIL");
    if (fail && (strcmp(fail, "segv") == 0 || strcmp(fail, "abort") == 0)) {
      copy_opt(s->crash, sizeof s->crash, fail);
      copy_opt(s->crash_at, sizeof s->crash_at, "prepare");
    }
  }
#endif
  log_line(s, "%s", line);
  if (s->hang_ms > 0) usleep((useconds_t)(s->hang_ms * 1000));
  maybe_crash(s, "create");
#ifdef EDGERT_ABORT_CREATE
  abort();
#endif
#ifdef EDGERT_FAIL_CREATE
  if (report_error) report_error("test delegate: refusing to create (built with EDGERT_FAIL_CREATE)");
  free(s);
  return NULL;
#endif
#ifdef EDGERT_FAKE_EDGETPU
  if (!fake_device_exists(s->device)) {
    free(s);
    return NULL; /* libedgetpu returns NULL without a message when no device matches */
  }
#endif
  (void)report_error;
  TfLiteDelegate* d = (TfLiteDelegate*)calloc(1, sizeof(TfLiteDelegate));
  if (!d) {
    free(s);
    return NULL;
  }
  d->data_ = s;
  d->Prepare = Prepare;
  d->CopyFromBufferHandle = NULL;
  d->CopyToBufferHandle = NULL;
  d->FreeBufferHandle = NULL;
  d->flags = kTfLiteDelegateFlagsNone;
  d->opaque_delegate_builder = NULL;
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
  if (!delegate) return;
  Settings* s = (Settings*)delegate->data_;
  if (s) {
    log_line(s, "destroy");
    free(s);
  }
  free(delegate);
}
