/* The process: the control thread (signals, admin listener, reload, drain) and the workers. */
#ifndef AOAI_GUARD_RUNTIME_H
#define AOAI_GUARD_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "aoai_guard/config.h"
#include "aoai_guard/services.h"
#include "aoai_guard/worker.h"

struct event_base;
struct evhttp;

typedef struct ag_runtime {
    struct event_base *base;          /* the control thread's loop */
    char *config_path;                /* NULL: embedded defaults */
    pthread_mutex_t cfg_lock;         /* guards cfg for readers on other threads (admin only) */
    ag_config *cfg;                   /* current snapshot (a reference) */
    ag_worker *workers;
    size_t nworkers;
    int *listen_fds;                  /* [nworkers][nlisteners] */
    int *listen_ports;                /* bound port of each listener */
    int admin_port;
    struct evhttp *admin;
    _Atomic long connections;         /* open client connections over all workers */
    _Atomic int workers_running;
    _Atomic bool draining;
    _Atomic bool ready;
    struct event *drain_deadline;
    ag_services svc;                  /* control-thread services the stages use */
    const char *port_file;
} ag_runtime;

/* Runs the proxy until SIGTERM/SIGINT and the drain complete; returns the exit status. */
int ag_runtime_run(ag_runtime *rt, ag_config *cfg);

/* Called by a worker thread when its loop has ended. */
void ag_runtime_worker_exited(ag_runtime *rt);

#endif
