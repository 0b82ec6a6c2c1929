#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H
// Only the reply parser is used: Herald does its own I/O on SwiftNIO (Docs/store.md).
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#endif
