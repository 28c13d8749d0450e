# Shared by the interface stand-ins: refuse to build where the real package exists, so a
# stand-in never shadows the upstream definitions on a workstation.
function(failrecov_refuse_to_shadow)
  set(_prefixes $ENV{AMENT_PREFIX_PATH} ${CMAKE_PREFIX_PATH})
  string(REPLACE ":" ";" _prefixes "${_prefixes}")
  foreach(_prefix IN LISTS _prefixes)
    set(_manifest "${_prefix}/share/${PROJECT_NAME}/package.xml")
    if(EXISTS "${_manifest}")
      file(READ "${_manifest}" _content)
      string(FIND "${_content}" "failrecov_stand_in" _is_stand_in)
      if(_is_stand_in EQUAL -1)
        message(FATAL_ERROR
          "A real ${PROJECT_NAME} is installed at ${_prefix}; the failrecov_ros stand-in must "
          "not shadow it. Do not build stand_ins/${PROJECT_NAME}.")
      endif()
    endif()
  endforeach()
endfunction()

# Generate every .msg/.action under this package with the given interface dependencies.
macro(failrecov_stand_in_interfaces)
  find_package(rosidl_default_generators REQUIRED)
  foreach(_dep ${ARGN})
    find_package(${_dep} REQUIRED)
  endforeach()
  file(GLOB _interfaces CONFIGURE_DEPENDS RELATIVE "${CMAKE_CURRENT_SOURCE_DIR}"
    "${CMAKE_CURRENT_SOURCE_DIR}/msg/*.msg" "${CMAKE_CURRENT_SOURCE_DIR}/action/*.action")
  list(SORT _interfaces)
  rosidl_generate_interfaces(${PROJECT_NAME} ${_interfaces} DEPENDENCIES ${ARGN})
  ament_export_dependencies(rosidl_default_runtime)
endmacro()
