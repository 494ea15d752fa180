#pragma once
// Draws a Figure with PLplot's cairo devices (pngcairo, svgcairo) into a file, atomically: PLplot writes a
// temporary name beside it, which is renamed into place once complete.
#include <filesystem>
#include <string>

#include "figure_layout.h"

namespace dschat::plot {

enum class ImageFormat { png, svg };

const char* extension_of(ImageFormat format);

// `source` (the metrics file) is named under the figure's title. Throws std::runtime_error when PLplot fails.
void draw_figure(const Figure& figure, const std::string& source, ImageFormat format,
                 const std::filesystem::path& file);

}  // namespace dschat::plot
