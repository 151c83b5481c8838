/* Compiled in the fat stage of Acfile.multistage; the thin stage ships only the binary. */
#include <stdio.h>

int main(void)
{
    puts("Hello from a static binary built on Debian");
    return 0;
}
