/* The hello example's program: static, so it runs in an otherwise empty image. */
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    const char *greeting = getenv("GREETING");
    puts(greeting ? greeting : "Hello AppC");
    return 0;
}
