/*
 * A QEMU TCG plugin that counts the guest instructions a program executes: a deterministic
 * cost figure for the ARM code path (emulated timings are not hardware timings, instruction
 * counts do not depend on the host's load). Used by tools/qemu_cost.py.
 *
 *   gcc -shared -fPIC -O2 -o libinsn.so insn.c
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./libinsn.so -d plugin PROGRAM ...
 *   qemu-aarch64 -cpu cortex-a72 -plugin ./libinsn.so,profile=FILE -d plugin PROGRAM ...
 *
 * With `profile=FILE`, it also writes FILE: one line per translated block start address, "ADDRESS
 * INSTRUCTIONS" in hex and decimal, the instructions executed in blocks starting there (blocks
 * translated more than once are added up): a profile by code address, which tools/qemu_profile.py
 * turns into one by function.
 *
 * Debian's QEMU 7.2 (package qemu-user) loads plugins but ships neither qemu-plugin.h nor the
 * example plugins, so the few entry points used are declared here, as in QEMU 7.2's
 * include/qemu/qemu-plugin.h (plugin API version 1). Counts are added inline per translated
 * block (one add per block execution), which is exact for a single-threaded guest.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
                                                  void (*cb)(qemu_plugin_id_t, struct qemu_plugin_tb *));
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                                     void *ptr, uint64_t imm);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, void (*cb)(qemu_plugin_id_t, void *),
                                           void *userdata);
extern void qemu_plugin_outs(const char *string);

static uint64_t instructions;

/* Per translated block, with an output file: its address, size and executions. */
struct block {
    uint64_t vaddr;
    uint64_t insns;
    uint64_t executions;
    struct block *next;
};
static struct block *blocks;
static const char *profile_path;

extern uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &instructions,
                                             qemu_plugin_tb_n_insns(tb));
    if (profile_path != NULL) {
        struct block *b = calloc(1, sizeof *b);
        if (b == NULL) {
            return;
        }
        b->vaddr = qemu_plugin_tb_vaddr(tb);
        b->insns = qemu_plugin_tb_n_insns(tb);
        b->next = blocks;
        blocks = b;
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->executions, 1);
    }
}

static void write_profile(void)
{
    FILE *out = fopen(profile_path, "w");
    if (out == NULL) {
        qemu_plugin_outs("insn: cannot write the profile\n");
        return;
    }
    for (struct block *b = blocks; b != NULL; b = b->next) {
        if (b->executions != 0) {
            fprintf(out, "%llx %llu\n", (unsigned long long)b->vaddr,
                    (unsigned long long)(b->insns * b->executions));
        }
    }
    fclose(out);
}

static void on_program_exit(qemu_plugin_id_t id, void *userdata)
{
    char line[64];
    (void)id;
    (void)userdata;
    snprintf(line, sizeof line, "guest instructions: %llu\n", (unsigned long long)instructions);
    qemu_plugin_outs(line);
    if (profile_path != NULL) {
        write_profile();
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc,
                                                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "profile=", 8) == 0) {
            profile_path = argv[i] + 8;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_program_exit, NULL);
    return 0;
}
