/* A minimal, layout-compatible subset of the TensorFlow Lite C API
 * (tensorflow/lite/core/c/common.h and
 * tensorflow/lite/delegates/external/external_delegate_interface.h), enough to
 * build a TFLite *external delegate* plugin without the TensorFlow sources.
 *
 * Layout notes (checked against common.h, field order matters):
 *
 *   typedef struct TfLiteIntArray { int size; int data[]; } TfLiteIntArray;
 *
 *   typedef struct TfLiteContext {
 *     size_t tensors_size;                                   // 1st
 *     TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext*, TfLiteIntArray**);  // 2nd
 *     TfLiteTensor* tensors;                                 // 3rd
 *     void* impl_;
 *     ... many more members ...
 *   } TfLiteContext;
 *
 *   typedef struct TfLiteDelegate {
 *     void* data_;
 *     TfLiteStatus (*Prepare)(TfLiteContext*, struct TfLiteDelegate*);
 *     TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext*, struct TfLiteDelegate*,
 *                                          TfLiteBufferHandle, TfLiteTensor*);
 *     TfLiteStatus (*CopyToBufferHandle)(TfLiteContext*, struct TfLiteDelegate*,
 *                                        TfLiteBufferHandle, TfLiteTensor*);
 *     void (*FreeBufferHandle)(TfLiteContext*, struct TfLiteDelegate*,
 *                              TfLiteBufferHandle*);
 *     int64_t flags;
 *     struct TfLiteOpaqueDelegateBuilder* opaque_delegate_builder;  // newer runtimes
 *   } TfLiteDelegate;
 *
 * TfLiteContext is declared here only as the prefix of members this plugin
 * reads (tensors_size, GetExecutionPlan); the runtime owns the real object and
 * the plugin only ever sees it through a pointer, so a prefix is enough.
 * TfLiteDelegate is declared in full: the plugin allocates it and the runtime
 * reads every member (older runtimes stop at `flags`; a trailing NULL
 * `opaque_delegate_builder` is what TfLiteDelegateCreate() sets, and it tells
 * new runtimes to call `Prepare`).
 */
#ifndef EDGERT_TFLITE_DELEGATE_MIN_H_
#define EDGERT_TFLITE_DELEGATE_MIN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum TfLiteStatus {
  kTfLiteOk = 0,
  kTfLiteError = 1,
  kTfLiteDelegateError = 2,
  kTfLiteApplicationError = 3,
  kTfLiteDelegateDataNotFound = 4,
  kTfLiteDelegateDataWriteError = 5,
  kTfLiteDelegateDataReadError = 6,
  kTfLiteUnresolvedOps = 7,
  kTfLiteCancelled = 8,
} TfLiteStatus;

typedef enum TfLiteDelegateFlags {
  kTfLiteDelegateFlagsNone = 0,
  kTfLiteDelegateFlagsAllowDynamicTensors = 1,
  kTfLiteDelegateFlagsRequirePropagatedShapes = 2,
  kTfLiteDelegateFlagsPerOperatorProfiling = 4,
} TfLiteDelegateFlags;

typedef int TfLiteBufferHandle;

typedef struct TfLiteIntArray {
  int size;
  int data[];
} TfLiteIntArray;

typedef struct TfLiteTensor TfLiteTensor; /* opaque here */
struct TfLiteOpaqueDelegateBuilder;       /* opaque here */

/* Prefix of the runtime's TfLiteContext (see the note above). */
typedef struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(struct TfLiteContext* context,
                                   TfLiteIntArray** execution_plan);
  TfLiteTensor* tensors;
  void* impl_;
} TfLiteContext;

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context,
                                       struct TfLiteDelegate* delegate,
                                       TfLiteBufferHandle buffer_handle,
                                       TfLiteTensor* tensor);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context,
                                     struct TfLiteDelegate* delegate,
                                     TfLiteBufferHandle buffer_handle,
                                     TfLiteTensor* tensor);
  void (*FreeBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                           TfLiteBufferHandle* handle);
  int64_t flags;
  struct TfLiteOpaqueDelegateBuilder* opaque_delegate_builder;
} TfLiteDelegate;

/* The external-delegate plugin interface (what load_delegate() calls). */
typedef void (*TfLitePluginErrorHandler)(const char* message);

#define EDGERT_PLUGIN_EXPORT __attribute__((visibility("default")))

EDGERT_PLUGIN_EXPORT TfLiteDelegate* tflite_plugin_create_delegate(
    char** options_keys, char** options_values, size_t num_options,
    TfLitePluginErrorHandler report_error);

EDGERT_PLUGIN_EXPORT void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate);

#ifdef __cplusplus
}
#endif

#endif /* EDGERT_TFLITE_DELEGATE_MIN_H_ */
