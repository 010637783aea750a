/* A core_pattern pipe helper for the crash report tests that damages what it writes: it copies
 * the core from stdin to argv[1] (a new file), with every NT_FILE note claiming 2^31 mappings
 * it does not have. What a report of a core with damaged notes must survive.
 */
#include <elf.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    size_t cap = 1 << 20, len = 0;
    unsigned char *core = malloc(cap);
    for (;;) {
        if (len == cap) core = realloc(core, cap *= 2);
        ssize_t n = read(0, core + len, cap - len);
        if (n <= 0) break;
        len += (size_t)n;
    }
    Elf64_Ehdr *eh = (Elf64_Ehdr *)core;
    for (int i = 0; len >= sizeof *eh && i < eh->e_phnum; i++) {
        Elf64_Phdr *ph = (Elf64_Phdr *)(core + eh->e_phoff + (size_t)i * sizeof *ph);
        if (ph->p_type != PT_NOTE) continue;
        size_t at = ph->p_offset, end = ph->p_offset + ph->p_filesz;
        while (at + sizeof(Elf64_Nhdr) <= end && end <= len) {
            Elf64_Nhdr *nh = (Elf64_Nhdr *)(core + at);
            size_t desc = at + sizeof *nh + ((nh->n_namesz + 3) & ~3u);
            if (nh->n_type == 0x46494c45 /* NT_FILE */ && desc + 8 <= end) {
                uint64_t lie = 1u << 31;
                memcpy(core + desc, &lie, 8);
            }
            at = desc + ((nh->n_descsz + 3) & ~3u);
        }
    }
    int out = open(argv[1], O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (out < 0) return 1;
    for (size_t done = 0; done < len;) {
        ssize_t n = write(out, core + done, len - done);
        if (n <= 0) return 1;
        done += (size_t)n;
    }
    return close(out) == 0 ? 0 : 1;
}
