# cython: freethreading_compatible = True
"""The last defence of a memory-mapped input that shrinks while it is read.

A read of a mapped page past the end of a file that was truncated after it
was mapped raises SIGBUS, and SIGBUS kills the process: no Python handler
runs before the faulting instruction is retried. ``inputs._MappedFile``
checks the file (``fstat``) before the pages of every batch and chunk are
touched and populates them first (``MADV_POPULATE_READ`` fails with EFAULT
instead); this module covers what those checks cannot: a truncation that
lands while a kernel is scanning pages it has just checked.

``guard(lo, hi)`` registers the address range of a map. A SIGBUS at an
address inside a registered range maps a private page of zeros over the
lost page and counts the fault for that range; the instruction then reads
zeros and the scan goes on. The driver checks the file after each round,
before any result of it is used (``faults(slot)`` has moved, and the file's
size too), and raises ``InputChangedError``: the zeros are never a result.
A SIGBUS anywhere else goes to the disposition there was before.
"""

cdef extern from *:
    """
    #include <signal.h>
    #include <stdint.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <unistd.h>

    #define LM_GUARD_SLOTS 256
    static volatile uintptr_t lm_guard_lo[LM_GUARD_SLOTS];
    static volatile uintptr_t lm_guard_hi[LM_GUARD_SLOTS];
    static volatile long lm_guard_faults[LM_GUARD_SLOTS];
    static struct sigaction lm_guard_previous;
    static volatile int lm_guard_installed = 0;
    static uintptr_t lm_guard_page = 4096;

    static void lm_guard_handler(int sig, siginfo_t *info, void *context) {
        uintptr_t address = (uintptr_t)info->si_addr;
        int i;
        if (info->si_code > 0) {            /* a fault, not a kill() */
            for (i = 0; i < LM_GUARD_SLOTS; i++) {
                if (lm_guard_lo[i] <= address && address < lm_guard_hi[i]) {
                    void *page = (void *)(address & ~(lm_guard_page - 1));
                    if (mmap(page, lm_guard_page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                            != MAP_FAILED) {
                        __atomic_add_fetch(&lm_guard_faults[i], 1, __ATOMIC_SEQ_CST);
                        return;     /* the read is retried and finds zeros */
                    }
                    break;
                }
            }
        }
        /* Not ours: as if this handler had never been installed (install() may put it back). */
        sigaction(SIGBUS, &lm_guard_previous, NULL);
        lm_guard_installed = 0;
        if (info->si_code <= 0)
            raise(SIGBUS);
        /* A fault is retried on return and meets the previous disposition. */
    }

    static int lm_guard_install(void) {
        struct sigaction action;
        if (lm_guard_installed)
            return 0;
        lm_guard_page = (uintptr_t)sysconf(_SC_PAGESIZE);
        memset(&action, 0, sizeof(action));
        action.sa_sigaction = lm_guard_handler;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGBUS, &action, &lm_guard_previous) != 0)
            return -1;
        lm_guard_installed = 1;
        return 0;
    }

    static int lm_guard_add(uintptr_t lo, uintptr_t hi) {
        int i;
        for (i = 0; i < LM_GUARD_SLOTS; i++) {
            if (__sync_bool_compare_and_swap(&lm_guard_hi[i], 0, 1)) {   /* claimed; matches nothing yet */
                lm_guard_faults[i] = 0;
                lm_guard_lo[i] = lo;
                __atomic_store_n(&lm_guard_hi[i], hi, __ATOMIC_SEQ_CST);
                return i;
            }
        }
        return -1;
    }

    static void lm_guard_remove(int i) {
        lm_guard_lo[i] = UINTPTR_MAX;
        __atomic_store_n(&lm_guard_hi[i], 0, __ATOMIC_SEQ_CST);
    }
    """
    int lm_guard_install() nogil
    int lm_guard_add(size_t lo, size_t hi) nogil
    void lm_guard_remove(int slot) nogil
    long lm_guard_fault_count "lm_guard_faults"[256]


def install():
    """Install the SIGBUS handler (once per process); False if it could not be."""
    return lm_guard_install() == 0


def guard(size_t address, size_t size):
    """Guard ``[address, address + size)``; the slot to pass to ``faults`` and ``unguard``, or -1 if full."""
    if size == 0:
        return -1
    return lm_guard_add(address, address + size)


def unguard(int slot):
    """Stop guarding a range (before its map is unmapped: the addresses may be reused)."""
    if 0 <= slot < 256:
        lm_guard_remove(slot)


def faults(int slot):
    """SIGBUS faults papered over with zeros in the range of ``slot`` since it was guarded."""
    if 0 <= slot < 256:
        return lm_guard_fault_count[slot]
    return 0
