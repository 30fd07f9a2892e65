# cmake --install: headers, libraries and a tapegradConfig.cmake for find_package(tapegrad).
