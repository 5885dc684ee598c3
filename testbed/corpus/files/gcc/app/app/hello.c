#include <stdio.h>
#include <string.h>

int main(void) {
    const char *w[] = {"hello", "from", "gcc"};
    char buf[64] = "";
    for (size_t i = 0; i < sizeof w / sizeof *w; i++) {
        if (i) strcat(buf, " ");
        strcat(buf, w[i]);
    }
    puts(buf);
    return 0;
}
